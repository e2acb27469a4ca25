"""Architecture numbers for a model outside the catalog, read from its Hugging Face config.json.

Looked for, in order: the model id as a local directory, the local Hugging Face cache
(`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`), then the Hub itself when reachable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""A config.json is a few KiB; anything far larger is not one."""


def _parse(text: str | bytes, where: str) -> dict[str, Any]:
    """A config.json's object, or CatalogError saying why it is not one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise CatalogError(f"{where} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{where} holds a JSON {type(data).__name__}, not an object")
    return data


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise CatalogError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise CatalogError(f"{path} is larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB")
    return _parse(data, str(path))


def _local(model_id: str) -> Path:
    """The model id as a local path ('~user' that does not exist stays as written)."""
    try:
        return Path(model_id).expanduser()
    except RuntimeError:
        return Path(model_id)


def _is_file(path: Path, directory: bool = False) -> bool:
    try:
        return path.is_dir() if directory else path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _from_cache(model_id: str) -> dict[str, Any] | None:
    folder = "models--" + model_id.replace("/", "--")
    for cache_dir in hub_cache_dirs():
        snapshots = cache_dir / folder / "snapshots"
        try:
            found = sorted(snapshots.glob("*/config.json"))
        except (OSError, ValueError):
            continue
        for config in found:
            return _read_file(config)
    return None


def _from_hub(model_id: str, endpoint: str, token: str | None) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{endpoint.rstrip('/')}/{model_id}/resolve/main/config.json"
    import httpx  # only when the Hub is asked: an offline plan never loads it

    try:
        response = httpx.get(url, headers=headers, timeout=5.0, follow_redirects=True)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return _parse(response.content[: MAX_CONFIG_BYTES + 1], url)


def read_config(
    model_id: str,
    *,
    endpoint: str = "https://huggingface.co",
    token: str | None = None,
    use_hub: bool = True,
) -> dict[str, Any]:
    """The model's config.json as a dict; CatalogError naming every place looked in."""
    local = _local(model_id)
    if _is_file(local / "config.json"):
        return _read_file(local / "config.json")
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


_LIMIT = 1 << 40
"""Larger than any real dimension or count; keeps arithmetic on hostile numbers bounded."""


def _number(cfg: dict[str, Any], key: str, default: int | None = None, minimum: int = 1) -> int:
    """A whole number from a config.json: present (or defaulted), an integer, within bounds.

    Strings, booleans, fractions and values below `minimum` are refused with the key named,
    so a broken config.json becomes a Problem, never a traceback."""
    value = cfg.get(key)
    if value is None:
        if default is None:
            raise CatalogError(f"config.json has no {key!r}; servekit cannot size the model")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogError(f"config.json: {key!r} is {value!r}, not a whole number")
    if not minimum <= value <= _LIMIT:
        raise CatalogError(f"config.json: {key!r} is {value}, expected {minimum} or more")
    return value


def count_params(cfg: dict[str, Any]) -> int:
    """Parameter count of a decoder-only transformer (dense or mixture-of-experts)."""
    hidden = _number(cfg, "hidden_size")
    heads = _number(cfg, "num_attention_heads")
    kv_heads = _number(cfg, "num_key_value_heads", heads)
    head_dim = _number(cfg, "head_dim", max(1, hidden // heads))
    inter = _number(cfg, "intermediate_size", 4 * hidden)
    vocab = _number(cfg, "vocab_size")
    experts = _number(cfg, "num_local_experts", 0, minimum=0) or _number(
        cfg, "num_experts", 0, minimum=0
    )
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    if cfg.get("attention_bias") is True or str(cfg.get("model_type") or "").startswith("qwen2"):
        attention += heads * head_dim + 2 * kv_heads * head_dim
    mlp = 3 * hidden * inter
    if experts:
        mlp = experts * mlp + hidden * experts
    per_layer = attention + mlp + 2 * hidden
    embed = vocab * hidden
    head = 0 if cfg.get("tie_word_embeddings", False) else embed
    return _number(cfg, "num_hidden_layers") * per_layer + embed + head + hidden


def model_from_config(model_id: str, cfg: dict[str, Any]) -> ModelInfo:
    """A ModelInfo from a config.json (a vision-language model's `text_config` is used)."""
    nested = cfg.get("text_config")
    if nested is not None and not isinstance(nested, dict):
        raise CatalogError(f"config.json: 'text_config' is {type(nested).__name__}, not an object")
    text = dict(nested or cfg)
    if text.get("vocab_size") is None:
        text["vocab_size"] = cfg.get("vocab_size")
    heads = _number(text, "num_attention_heads")
    hidden = _number(text, "hidden_size")
    kv_heads = _number(text, "num_key_value_heads", heads)
    if kv_heads > heads or heads % kv_heads:
        raise CatalogError(
            f"config.json: {heads} attention heads cannot be shared by {kv_heads} KV heads"
        )
    experts = _number(text, "num_local_experts", 0, minimum=0) or _number(
        text, "num_experts", 0, minimum=0
    )
    return ModelInfo(
        name=model_id,
        hf_id=model_id,
        params=count_params(text),
        layers=_number(text, "num_hidden_layers"),
        hidden_size=hidden,
        intermediate_size=_number(text, "intermediate_size", 4 * hidden),
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=_number(text, "head_dim", max(1, hidden // heads)),
        vocab_size=_number(text, "vocab_size"),
        max_context=_number(text, "max_position_embeddings", 4096),
        tied_embeddings=text.get("tie_word_embeddings", False) is True,
        experts=experts,
        experts_per_token=_number(text, "num_experts_per_tok", 0, minimum=0),
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
    if "/" not in name and not (_is_file(_local(name)) or _is_file(_local(name), directory=True)):
        raise CatalogError(
            f"unknown model {name!r}: {closest_models(name)} (or give a Hugging Face id ORG/NAME)"
        )
    return model_from_config(name, read_config(name, endpoint=endpoint))
