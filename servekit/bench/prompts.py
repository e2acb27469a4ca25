"""Prompts of exact token lengths, unique per request so no prefix cache can help.

With the model's tokenizer (a local path, or the Hugging Face cache; never downloaded) a prompt is
random token ids, decoded to text and re-encoded until it is exactly `input_len` tokens long (the
method of `vllm bench serve`'s random dataset). Without one, prompts are random common English
words, about one token each; the server's usage report then gives the true count.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from servekit.catalog import find_model
from servekit.catalog.hf_config import hub_cache_dirs

# Common words that are one token (with their leading space) in the Llama 3, Qwen 2 and GPT-2 BPEs.
_WORDS = (  # noqa: SIM905
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy music market sense nation plan college interest death"
).split()


class Tokenizer(Protocol):
    """What prompt generation needs from a tokenizer."""

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def special_ids(self) -> set[int]: ...


class TokenizerError(RuntimeError):
    """No usable tokenizer where one was asked for."""


class HfTokenizer:
    """A `tokenizer.json` loaded with the `tokenizers` library (no special tokens added)."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError:
            raise TokenizerError(
                "exact prompt lengths need the `tokenizers` package: pip install 'servekit[bench]'"
            ) from None
        self.path = path
        self._tok = RustTokenizer.from_file(str(path))
        self._special: set[int] = set()
        for token in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", []):
            if token.get("special"):
                self._special.add(int(token["id"]))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=False))

    @property
    def special_ids(self) -> set[int]:
        return self._special


def _snapshot_file(model_id: str, name: str) -> Path | None:
    folder = "models--" + model_id.replace("/", "--")
    for cache_dir in hub_cache_dirs():
        for candidate in sorted((cache_dir / folder / "snapshots").glob(f"*/{name}")):
            return candidate
    return None


def find_tokenizer(spec: str | None, model: str) -> Path | None:
    """The tokenizer.json for `spec` (a path or HF id), else for the served model; None if absent.

    The model name is tried as a local folder, as a Hugging Face id in the cache, and through the
    catalog (so an Ollama tag like `llama3.1:8b` finds the Llama 3.1 tokenizer in the cache).
    """
    names = [spec] if spec else [model]
    if not spec and (info := find_model(model)) is not None:
        names.append(info.hf_id)
    for name in names:
        assert name is not None
        path = Path(name).expanduser()
        if path.is_file():
            return path
        if (path / "tokenizer.json").is_file():
            return path / "tokenizer.json"
        if "/" in name and (cached := _snapshot_file(name, "tokenizer.json")) is not None:
            return cached
    if spec:
        raise TokenizerError(
            f"no tokenizer.json at {spec!r} (a file, a folder holding one, or a Hugging Face id "
            "in the local cache)"
        )
    return None


def load_tokenizer(spec: str | None, model: str) -> HfTokenizer | None:
    path = find_tokenizer(spec, model)
    return None if path is None else HfTokenizer(path)


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    tokens: int


class PromptMaker:
    """Makes unique prompts of `input_len` tokens from a seeded random stream."""

    def __init__(self, tokenizer: Tokenizer | None, input_len: int, seed: int) -> None:
        self.tokenizer = tokenizer
        self.input_len = input_len
        self._rng = random.Random(seed)
        if tokenizer is not None:
            special = tokenizer.special_ids
            self._ids = [i for i in range(tokenizer.vocab_size) if i not in special]

    def make(self) -> Prompt:
        if self.tokenizer is None:
            words = self._rng.choices(_WORDS, k=self.input_len)
            return Prompt(" ".join(words), self.input_len)
        return self._exact(self.tokenizer)

    def _exact(self, tokenizer: Tokenizer) -> Prompt:
        target = self.input_len
        ids = self._rng.choices(self._ids, k=target)
        text = tokenizer.decode(ids)
        for _ in range(10):
            ids = tokenizer.encode(text)
            if len(ids) == target:
                return Prompt(text, target)
            if len(ids) > target:
                ids = ids[:target]
            else:
                ids = ids + self._rng.choices(self._ids, k=target - len(ids))
            text = tokenizer.decode(ids)
        return Prompt(text, len(tokenizer.encode(text)))

    def many(self, count: int) -> list[Prompt]:
        return [self.make() for _ in range(count)]


def count_tokens(tokenizer: Tokenizer, parts: list[str]) -> int:
    return len(tokenizer.encode("".join(parts)))


def describe(tokenizer: Any) -> str | None:
    path = getattr(tokenizer, "path", None)
    return str(path) if path is not None else None
