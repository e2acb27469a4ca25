"""Models outside the catalog are planned from their config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servekit import catalog, planner
from servekit.catalog.hf_config import resolve_model

LLAMA3_8B_CONFIG = {  # meta-llama/Meta-Llama-3-8B-Instruct config.json (abridged)
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}


def test_local_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    model = resolve_model(str(tmp_path))
    assert model.params == 8_030_261_248
    assert planner.kv_bytes_per_token(model) == 128 * 1024
    assert model.max_context == 8192 and not model.from_catalog


def test_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "hub/models--acme--llama3-8b-ft/snapshots/abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    model = resolve_model("acme/llama3-8b-ft", endpoint="http://127.0.0.1:9")
    assert model.hf_id == "acme/llama3-8b-ft" and model.layers == 32


def test_unreadable_names_every_place_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(catalog.CatalogError) as caught:
        resolve_model("acme/missing", endpoint="http://127.0.0.1:9")
    assert str(tmp_path / "hub") in str(caught.value)
    assert "http://127.0.0.1:9/acme/missing" in str(caught.value)


def test_unknown_plain_name_suggests_catalog_names() -> None:
    with pytest.raises(catalog.CatalogError, match="did you mean"):
        resolve_model("llama-3.1-8b-instruc")
