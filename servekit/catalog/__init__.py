"""Curated data servekit plans with: GPUs, models, pinned versions and AWS instance types.

The data lives in TOML files beside this module (each notes its sources); this module loads them
into typed records and looks names up, answering unknown names with the closest known ones.
"""

from __future__ import annotations

import difflib
import tomllib
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict


class CatalogError(LookupError):
    """A name that is not in a catalog; the message lists the closest known names."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuInfo(Record):
    """One GPU model as the planner and the GPU facts need it."""

    name: str
    aliases: tuple[str, ...] = ()
    smi_names: tuple[str, ...] = ()
    memory_mib: int | None = None
    bandwidth_gbps: float
    compute_capability: str = ""
    fp8: bool = False
    nvswitch: bool = False
    peer_to_peer: bool = True
    apple: bool = False

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_mib is None else self.memory_mib * 2**20

    @property
    def compute_capability_tuple(self) -> tuple[int, int]:
        major, _, minor = self.compute_capability.partition(".")
        return (int(major), int(minor)) if major else (0, 0)


class ModelInfo(Record):
    """A model's architecture numbers: enough to size weights and KV cache without downloading."""

    name: str
    hf_id: str
    aliases: tuple[str, ...] = ()
    params: int
    active_params: int | None = None
    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    tied_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2
    experts: int = 0
    experts_per_token: int = 0
    kv_lora_rank: int = 0  # MLA (DeepSeek-V2/V3 class): the latent KV cached per layer
    qk_rope_head_dim: int = 0  # MLA: the rotary part cached beside the latent
    native_quantization: str | None = None  # the checkpoint ships quantized ("mxfp4", "fp8")
    loaded_gib: float | None = None  # vLLM's "Model loading took" for the native checkpoint
    params_from_card: bool = False  # params from the model card: count_params cannot derive them
    runtime_extra_gib: float = 0.0  # memory vLLM's logs show beyond the profile terms, whole model
    multimodal: bool = False
    sliding_window: bool = False
    gated: bool = False
    ollama_tag: str | None = None
    ollama_quantization: str | None = None
    ollama_size_gb: float | None = None
    awq: str | None = None
    fp8: str | None = None
    from_catalog: bool = True

    @property
    def embedding_params(self) -> int:
        """Parameters of the input embedding plus an untied output head (kept 16-bit by AWQ)."""
        embed = self.vocab_size * self.hidden_size
        return embed if self.tied_embeddings else 2 * embed

    @property
    def decode_params(self) -> int:
        """Parameters read per decoded token: all of them, or the active experts of an MoE."""
        return self.active_params or self.params


class VllmBuild(Record):
    cuda: str
    min_driver: str
    source: str
    unconfirmed: bool = False


class VllmRelease(Record):
    version: str
    released: str
    python: str
    torch: str
    builds: tuple[VllmBuild, ...]


class DriverBranch(Record):
    branch: int
    kind: str
    end_of_life: str
    max_cuda: str


class OllamaVersions(Record):
    default: str
    minimum: str
    zstd_since: str
    min_driver: str


class InstanceType(Record):
    """An AWS instance type with GPUs, and what it costs."""

    name: str
    gpu: str
    gpus: int
    vcpus: int
    memory_gib: int
    max_efa: int
    network_cards: int
    price_usd_hour: float | None = None
    price_date: str | None = None


@cache
def _load(filename: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    return tomllib.loads(text)


def _closest(name: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"did you mean {', '.join(matches)}?" if matches else f"known: {', '.join(known)}"


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


@cache
def gpus() -> dict[str, GpuInfo]:
    return {name: GpuInfo(name=name, **fields) for name, fields in _load("gpus.toml").items()}


@cache
def _gpu_index() -> dict[str, GpuInfo]:
    index: dict[str, GpuInfo] = {}
    for gpu in gpus().values():
        for key in (gpu.name, *gpu.aliases, *gpu.smi_names):
            index[_normalise(key)] = gpu
            index[_normalise(key.removeprefix("NVIDIA "))] = gpu
    return index


def gpu(name: str) -> GpuInfo:
    """A GPU by catalog name, alias, or the name nvidia-smi prints (case-insensitive)."""
    found = _gpu_index().get(_normalise(name))
    if found is None:
        raise CatalogError(f"unknown GPU {name!r}: {_closest(name, list(gpus()))}")
    return found


@cache
def models() -> dict[str, ModelInfo]:
    return {name: ModelInfo(name=name, **fields) for name, fields in _load("models.toml").items()}


@cache
def _model_index() -> dict[str, ModelInfo]:
    index: dict[str, ModelInfo] = {}
    for model in models().values():
        keys = [model.name, model.hf_id, *model.aliases]
        if model.ollama_tag:
            keys.append(model.ollama_tag)
        for key in keys:
            index[key.lower()] = model
    return index


def normalise_ollama_tag(tag: str) -> str:
    """Ollama's own normalisation for comparisons: a name without a tag means `:latest`."""
    tag = tag.strip().removeprefix("registry.ollama.ai/").removeprefix("library/")
    return tag if ":" in tag.rsplit("/", 1)[-1] else f"{tag}:latest"


def find_model(name: str) -> ModelInfo | None:
    """A catalog model by catalog name, Hugging Face id, alias or Ollama tag; None if unknown."""
    key = name.strip().lower()
    return _model_index().get(key) or _model_index().get(key.removesuffix(":latest"))


def model_names() -> list[str]:
    return list(models())


def closest_models(name: str) -> str:
    return _closest(name, model_names())


@cache
def vllm_releases() -> dict[str, VllmRelease]:
    return {
        version: VllmRelease(version=version, **fields)
        for version, fields in _load("versions.toml")["vllm"].items()
    }


def vllm_release(version: str) -> VllmRelease:
    found = vllm_releases().get(version)
    if found is None:
        raise CatalogError(
            f"vLLM {version} is not in the versions catalog: "
            + _closest(version, list(vllm_releases()))
        )
    return found


@cache
def ollama_versions() -> OllamaVersions:
    return OllamaVersions(**_load("versions.toml")["ollama"])


@cache
def driver_branches() -> dict[int, DriverBranch]:
    table = _load("versions.toml")["driver"]["branches"]
    return {int(b): DriverBranch(branch=int(b), **fields) for b, fields in table.items()}


def default_driver_branch() -> int:
    return int(_load("versions.toml")["driver"]["default"])


def minor_version_minimum_branch(cuda_major: int) -> int | None:
    """The oldest driver branch that runs every CUDA `cuda_major`.x toolkit by minor-version
    compatibility (versions.toml `[cuda.minor_version_minimum_driver]`); None if unknown."""
    table = _load("versions.toml")["cuda"]["minor_version_minimum_driver"]
    found = table.get(str(cuda_major))
    return int(found) if found is not None else None


def cuda_keyring_version() -> str:
    """The cuda-keyring package version servekit installs (versions.toml `[cuda_keyring]`)."""
    return str(_load("versions.toml")["cuda_keyring"]["version"])


def cuda_keyring_sha256(directory: str, arch: str) -> str | None:
    """The pinned sha256 of NVIDIA's cuda-keyring .deb for a repository directory and
    architecture (`ubuntu2404`, `x86_64`), or None when servekit has no pin for that pair."""
    pins: dict[str, str] = _load("versions.toml")["cuda_keyring"]["sha256"]
    return pins.get(f"{directory}/{arch}")


def tool_version(tool: str) -> str:
    return str(_load("versions.toml")["tools"][tool])


@cache
def instance_types() -> dict[str, InstanceType]:
    return {name: InstanceType(name=name, **fields) for name, fields in _load("aws.toml").items()}


def instance_type(name: str) -> InstanceType:
    found = instance_types().get(name.strip().lower())
    if found is None:
        raise CatalogError(
            f"unknown or GPU-less instance type {name!r}: {_closest(name, list(instance_types()))}"
        )
    return found


def version_tuple(version: str) -> tuple[int, ...]:
    """'580.65.06' -> (580, 65, 6); for comparing driver and release versions."""
    return tuple(int(part) for part in version.split(".") if part.isdigit())
