"""Architecture numbers for a model outside the catalog, read from its Hugging Face config.json.

Looked for, in order: the model id as a local directory, the local Hugging Face cache
(`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`), then the Hub itself when reachable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from servekit.catalog import CatalogError, ModelInfo


def hub_cache_dirs() -> list[Path]:
    """Where huggingface_hub keeps its cache on this machine, most specific first."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def _from_cache(model_id: str) -> dict[str, Any] | None:
    folder = "models--" + model_id.replace("/", "--")
    for cache_dir in hub_cache_dirs():
        snapshots = cache_dir / folder / "snapshots"
        for config in sorted(snapshots.glob("*/config.json")):
            return dict(json.loads(config.read_text()))
    return None


def _from_hub(model_id: str, endpoint: str, token: str | None) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{endpoint.rstrip('/')}/{model_id}/resolve/main/config.json"
    try:
        response = httpx.get(url, headers=headers, timeout=5.0, follow_redirects=True)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return dict(response.json())


def read_config(
    model_id: str,
    *,
    endpoint: str = "https://huggingface.co",
    token: str | None = None,
    use_hub: bool = True,
) -> dict[str, Any]:
    """The model's config.json as a dict; CatalogError naming every place looked in."""
    local = Path(model_id).expanduser()
    if (local / "config.json").is_file():
        return dict(json.loads((local / "config.json").read_text()))
    cached = _from_cache(model_id)
    if cached is not None:
        return cached
    if use_hub and "/" in model_id:
        fetched = _from_hub(model_id, endpoint, token)
        if fetched is not None:
            return fetched
    looked = [str(local / "config.json"), *(str(d) for d in hub_cache_dirs())]
    if use_hub:
        looked.append(f"{endpoint}/{model_id}")
    raise CatalogError(
        f"model {model_id!r} is not in the catalog and no config.json could be read "
        f"(looked in: {', '.join(looked)})"
    )


def count_params(cfg: dict[str, Any]) -> int:
    """Parameter count of a decoder-only transformer (dense or mixture-of-experts)."""
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    vocab = int(cfg["vocab_size"])
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    if cfg.get("attention_bias") or cfg.get("model_type", "").startswith("qwen2"):
        attention += heads * head_dim + 2 * kv_heads * head_dim
    mlp = 3 * hidden * inter
    if experts:
        mlp = experts * mlp + hidden * experts
    per_layer = attention + mlp + 2 * hidden
    embed = vocab * hidden
    head = 0 if cfg.get("tie_word_embeddings", False) else embed
    return int(cfg["num_hidden_layers"]) * per_layer + embed + head + hidden


def model_from_config(model_id: str, cfg: dict[str, Any]) -> ModelInfo:
    """A ModelInfo from a config.json (a vision-language model's `text_config` is used)."""
    text = dict(cfg.get("text_config") or cfg)
    text.setdefault("vocab_size", cfg.get("vocab_size"))
    heads = int(text["num_attention_heads"])
    hidden = int(text["hidden_size"])
    experts = int(text.get("num_local_experts") or text.get("num_experts") or 0)
    return ModelInfo(
        name=model_id,
        hf_id=model_id,
        params=count_params(text),
        layers=int(text["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(text.get("intermediate_size") or 4 * hidden),
        attention_heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        vocab_size=int(text["vocab_size"]),
        max_context=int(text.get("max_position_embeddings") or 4096),
        tied_embeddings=bool(text.get("tie_word_embeddings", False)),
        experts=experts,
        experts_per_token=int(text.get("num_experts_per_tok") or 0),
        multimodal="text_config" in cfg,
        sliding_window=bool(text.get("sliding_window")),
        from_catalog=False,
    )


def resolve_model(name: str, *, endpoint: str = "https://huggingface.co") -> ModelInfo:
    """A model by catalog name, Hugging Face id or Ollama tag; else from its config.json."""
    from servekit.catalog import closest_models, find_model

    found = find_model(name)
    if found is not None:
        return found
    if "/" not in name and not Path(name).expanduser().exists():
        raise CatalogError(
            f"unknown model {name!r}: {closest_models(name)} (or give a Hugging Face id ORG/NAME)"
        )
    return model_from_config(name, read_config(name, endpoint=endpoint))
