"""What a plan is (`ModelPlan`), what was asked (`Request`), why one is refused (`PlanRefused`),
and the memory arithmetic every engine's plan uses."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from servekit.catalog import GpuInfo, ModelInfo

GIB = 2**30
GB = 10**9
AWQ_BYTES_PER_PARAM = 0.52
MIN_DEFAULT_CONTEXT = 4096
APPLE_GPU_SHARE = 0.75
OLLAMA_OVERHEAD_BYTES = GIB
"""Ollama's memory beyond weights and KV cache (compute graph, output buffers): its log put
llama3.1:8b at 8192 tokens 0.94 GiB above the library size plus the KV cache
(memory.required.full 6.5 GiB, https://github.com/ollama/ollama/issues/11292)."""
OLLAMA_VISION_BYTES = 3 * GIB // 2
"""More for a multimodal model: Ollama reserves the image projector's compute graph (1.0 GiB for
gemma3:12b) and, on CUDA, 0.5 GiB more than its parts add up to (memory.required.full 11.0 GiB at
2048 tokens, https://github.com/ollama/ollama/issues/11819)."""

Quantization = str  # "none" | "fp8" | "awq"


class PlanRefused(ValueError):
    """The model cannot be served this way; `alternatives` are concrete ways that would work."""

    def __init__(self, reason: str, alternatives: list[str], field: str = "model") -> None:
        self.reason = reason
        self.alternatives = alternatives
        self.field = field  # the Serve field the refusal is about
        text = reason
        if alternatives:
            text += ": " + ", or ".join(alternatives)
        super().__init__(text)


@dataclass(frozen=True)
class Request:
    """What the user asked for; None / 'auto' lets the planner choose."""

    max_model_len: int | None = None
    dtype: str = "auto"
    quantization: str = "auto"
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.92
    tensor_parallel: int | None = None
    pipeline_parallel: int | None = None


class ModelPlan(BaseModel):
    """The plan for one served model on one replica's hardware (the `--json` object)."""

    model_config = ConfigDict(frozen=True)

    model: str
    checkpoint: str
    engine: str
    gpu: str
    gpus: int
    nodes: int
    tensor_parallel: int
    pipeline_parallel: int
    quantization: str | None
    quantization_flag: str | None = None
    dtype: str
    kv_cache_dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    weights_gib: float
    weights_gib_per_gpu: float
    kv_bytes_per_token: int
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int
    kv_tokens_uncertainty: float = 0.05
    max_concurrency: float
    decode_tokens_per_s: float
    fits: bool = True
    tight: bool = False
    notes: tuple[str, ...] = ()


def weights_bytes(model: ModelInfo, quantization: Quantization = "none") -> int:
    """Bytes of the checkpoint's weights in the given quantization (a natively quantized
    checkpoint: what vLLM logged loading it, when the catalog has it)."""
    if quantization == model.native_quantization and model.loaded_gib:
        return int(model.loaded_gib * GIB)
    if quantization == "none":
        return 2 * model.params
    linear = model.params - model.embedding_params
    per_param = AWQ_BYTES_PER_PARAM if quantization == "awq" else 1.0
    return int(linear * per_param + 2 * model.embedding_params)


def kv_bytes_per_token(model: ModelInfo, kv_dtype_bytes: int = 2) -> int:
    """KV cache bytes for one token across all layers (one latent per layer for MLA)."""
    if model.kv_lora_rank:
        return model.layers * (model.kv_lora_rank + model.qk_rope_head_dim) * kv_dtype_bytes
    return 2 * model.layers * model.kv_heads * model.head_dim * kv_dtype_bytes


def tensor_parallel_ok(model: ModelInfo, tensor_parallel: int) -> bool:
    """vLLM's rule: TP divides the attention heads, and divides or is a multiple of the KV heads."""
    return model.attention_heads % tensor_parallel == 0 and (
        model.kv_heads % tensor_parallel == 0 or tensor_parallel % model.kv_heads == 0
    )


def decode_ceiling(
    model: ModelInfo, gpu: GpuInfo, quantization: Quantization, tensor_parallel: int
) -> float:
    """Upper bound on one stream's tokens/s: bandwidth x TP / weight bytes read per token."""
    read = weights_bytes(model, quantization) * model.decode_params / model.params
    return gpu.bandwidth_gbps * GB * tensor_parallel / read


def _dtype_bytes(kv_cache_dtype: str) -> int:
    return 1 if kv_cache_dtype == "fp8" else 2


def _usable_bytes(gpu: GpuInfo, utilization: float) -> float:
    assert gpu.memory_bytes is not None
    return utilization * gpu.memory_bytes


def _gib(value: float) -> float:
    return round(value / GIB, 2)


def _checkpoint(model: ModelInfo, quantization: Quantization) -> tuple[str, str | None]:
    """The repository to load and the --quantization flag vLLM needs for it (None: from config)."""
    if quantization == model.native_quantization:
        return model.hf_id, None
    if quantization == "awq":
        assert model.awq is not None
        return model.awq, None
    if quantization == "fp8":
        return (model.fp8, None) if model.fp8 else (model.hf_id, "fp8")
    return model.hf_id, None
