"""Prompts of exact token length, unique per request; tokenizer discovery without downloads."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from servekit.bench.prompts import HfTokenizer, PromptMaker, TokenizerError, find_tokenizer

STANDIN_TOKEN = re.compile(r"\w+|[^\w\s]")


@pytest.mark.parametrize("length", [1, 7, 512])
def test_exact_lengths_with_a_tokenizer(word_tokenizer: HfTokenizer, length: int) -> None:
    maker = PromptMaker(word_tokenizer, length, seed=1)
    prompts = maker.many(20)
    for prompt in prompts:
        assert prompt.tokens == length == len(word_tokenizer.encode(prompt.text))
        assert len(STANDIN_TOKEN.findall(prompt.text)) == length  # the stand-ins agree
    if length > 1:
        assert len({p.text for p in prompts}) == 20  # no two requests share a prompt


def test_same_seed_same_prompts_other_seed_others(word_tokenizer: HfTokenizer) -> None:
    first = [p.text for p in PromptMaker(word_tokenizer, 32, seed=5).many(3)]
    again = [p.text for p in PromptMaker(word_tokenizer, 32, seed=5).many(3)]
    other = [p.text for p in PromptMaker(word_tokenizer, 32, seed=6).many(3)]
    assert first == again
    assert not set(first) & set(other)


def test_words_without_a_tokenizer() -> None:
    prompt = PromptMaker(None, 40, seed=0).make()
    assert len(prompt.text.split()) == 40 and prompt.tokens == 40


def test_tokenizer_found_by_path_folder_cache_and_catalog(
    word_tokenizer: HfTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = word_tokenizer.path
    assert find_tokenizer(str(source), "m") == source
    assert find_tokenizer(str(source.parent), "m") == source
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    shutil.copy(source, snapshot / "tokenizer.json")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_tokenizer(None, "Qwen/Qwen2.5-7B-Instruct") == snapshot / "tokenizer.json"
    # An Ollama tag finds its Hugging Face tokenizer through the catalog.
    assert find_tokenizer(None, "qwen2.5:7b") == snapshot / "tokenizer.json"
    assert find_tokenizer(None, "unknown/model") is None
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json"):
        find_tokenizer(str(tmp_path / "missing"), "m")
