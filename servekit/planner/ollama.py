"""Planning a model on Ollama: whether its default quantization fits VRAM (or unified memory)
with the context and parallel requests configured."""

from __future__ import annotations

from servekit.catalog import GpuInfo, ModelInfo
from servekit.planner.model import (
    APPLE_GPU_SHARE,
    GB,
    GIB,
    OLLAMA_OVERHEAD_BYTES,
    OLLAMA_VISION_BYTES,
    ModelPlan,
    _gib,
)


def ollama_context(memory_bytes: int, configured: int, model: ModelInfo | None) -> int:
    """Ollama's context length: configured, or its default by VRAM; capped by the model."""
    if configured:
        context = configured
    elif memory_bytes < 24 * GIB:
        context = 4096
    elif memory_bytes < 48 * GIB:
        context = 32768
    else:
        context = 262144
    return min(context, model.max_context) if model else context


def ollama_memory(gpu: GpuInfo | None, gpu_count: int, memory_gib: float | None) -> int:
    """Bytes Ollama may fill: the GPUs' VRAM, or the GPU's share of an Apple machine's unified
    memory (none on the CPU)."""
    if gpu is None:
        return 0
    if gpu.apple:
        return int((memory_gib or 0) * GIB * APPLE_GPU_SHARE)
    return (gpu.memory_bytes or 0) * gpu_count


def ollama_kv_bytes_per_token(model: ModelInfo, kv_cache_type: str) -> int:
    """Ollama's KV bytes a token: every layer at full context (sliding-window layers too, where
    Ollama keeps only the window: an over-estimate for those models)."""
    kv_bytes = {"f16": 2.0, "q8_0": 1.0, "q4_0": 0.5}[kv_cache_type]
    return int(2 * model.layers * model.kv_heads * model.head_dim * kv_bytes)


def ollama_need_bytes(model: ModelInfo, context: int, num_parallel: int, kv_cache_type: str) -> int:
    """Memory the laptop plan says Ollama needs to hold `model` whole on the GPU: the library
    download, the KV cache of `num_parallel` requests of `context` tokens, and its overhead
    (compared with Ollama's own memory.required.full in tests/data/ollama_memory_logs.toml)."""
    assert model.ollama_size_gb is not None
    weights = int(model.ollama_size_gb * GB)
    per_token = ollama_kv_bytes_per_token(model, kv_cache_type)
    overhead = OLLAMA_OVERHEAD_BYTES + (OLLAMA_VISION_BYTES if model.multimodal else 0)
    return weights + per_token * context * num_parallel + overhead


def plan_ollama(
    model: ModelInfo | None,
    tag: str,
    gpu: GpuInfo | None,
    gpu_count: int,
    memory_gib: float | None,
    context_length: int,
    num_parallel: int,
    kv_cache_type: str,
) -> ModelPlan:
    """Whether Ollama's default quantization of `tag` fits VRAM (or unified memory) with context."""
    memory = ollama_memory(gpu, gpu_count, memory_gib)
    context = ollama_context(memory, context_length, model)
    common = {
        "checkpoint": tag,
        "engine": "ollama",
        "gpu": gpu.name if gpu else "cpu",
        "gpus": gpu_count if gpu else 0,
        "nodes": 1,
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "dtype": "gguf",
        "kv_cache_dtype": kv_cache_type,
        "max_model_len": context,
        "gpu_memory_utilization": 1.0,
        "max_concurrency": num_parallel,
    }
    if model is None or model.ollama_size_gb is None:
        return _unknown_size(tag, common)
    per_token = ollama_kv_bytes_per_token(model, kv_cache_type)
    weights = int(model.ollama_size_gb * GB)
    need = ollama_need_bytes(model, context, num_parallel, kv_cache_type)
    fits = memory >= need
    free = max(memory - weights - OLLAMA_OVERHEAD_BYTES, 0)
    bandwidth = gpu.bandwidth_gbps if gpu else 0
    return ModelPlan(
        model=model.name,
        quantization=model.ollama_quantization,
        weights_gib=_gib(weights),
        weights_gib_per_gpu=_gib(weights / max(gpu_count, 1)),
        kv_bytes_per_token=per_token,
        kv_cache_gib_per_gpu=_gib(free),
        kv_cache_tokens=int(free // per_token),
        decode_tokens_per_s=round(bandwidth * GB / weights, 1) if gpu else 0.0,
        fits=fits or gpu is None,
        notes=_fit_notes(gpu, fits, need, memory, context, num_parallel),
        **common,
    )


def _fit_notes(
    gpu: GpuInfo | None, fits: bool, need: int, memory: int, context: int, num_parallel: int
) -> tuple[str, ...]:
    """Why a plan runs slowly: on the CPU, or with layers spilled from a GPU too small."""
    if gpu is None:
        return ("no GPU declared: Ollama runs on the CPU",)
    if fits:
        return ()
    return (
        f"needs {_gib(need)} GiB with {context} tokens x {num_parallel} parallel, "
        f"{'unified memory gives the GPU' if gpu.apple else 'VRAM holds'} {_gib(memory)} GiB: "
        "layers spill to the CPU and decode slows down; lower context_length or pick a "
        "smaller tag",
    )


def _unknown_size(tag: str, common: dict[str, object]) -> ModelPlan:
    """A model outside the catalog: its size (and so whether it fits) is known after the pull."""
    return ModelPlan(
        model=tag,
        quantization=None,
        weights_gib=0,
        weights_gib_per_gpu=0,
        kv_bytes_per_token=0,
        kv_cache_gib_per_gpu=0,
        kv_cache_tokens=0,
        decode_tokens_per_s=0,
        fits=True,
        notes=(f"{tag} is not in the catalog: its size is known after the pull",),
        **common,
    )
