"""Capacity planning: will a model fit, with which parallelism and quantization, for how many
concurrent requests, and how fast can one stream decode at best. Pure functions, no I/O.

Formulas (vLLM's memory model; see shared/reference/vllm.md §5):
- weights = params x bytes/param (bf16/fp16 2, fp8 1, AWQ int4 ~0.52 on the quantized linear
  layers; embeddings and an untied head stay 16-bit for AWQ and FP8), split over TP x PP GPUs;
- KV bytes/token = 2 x layers x KV heads x head dim x bytes of the KV dtype; per GPU the layers are
  split by PP and the KV heads by TP while TP <= KV heads (replicated beyond);
- KV capacity per GPU = gpu_memory_utilization x memory - weights - runtime reserve; tokens =
  capacity / per-GPU KV bytes per token; worst-case concurrency = tokens / max_model_len;
- decode ceiling (one stream) = memory bandwidth x TP / bytes read per token (weights only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from servekit.catalog import GpuInfo, ModelInfo

GIB = 2**30
GB = 10**9
AWQ_BYTES_PER_PARAM = 0.52
DEFAULT_MAX_BATCHED_TOKENS = 8192
MIN_DEFAULT_CONTEXT = 4096
APPLE_GPU_SHARE = 0.75
OLLAMA_OVERHEAD_BYTES = GIB // 2

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
    max_concurrency: float
    decode_tokens_per_s: float
    fits: bool = True
    notes: tuple[str, ...] = ()


def weights_bytes(model: ModelInfo, quantization: Quantization = "none") -> int:
    """Bytes of the checkpoint's weights in the given quantization."""
    if quantization == "none":
        return 2 * model.params
    linear = model.params - model.embedding_params
    per_param = AWQ_BYTES_PER_PARAM if quantization == "awq" else 1.0
    return int(linear * per_param + 2 * model.embedding_params)


def kv_bytes_per_token(model: ModelInfo, kv_dtype_bytes: int = 2) -> int:
    """KV cache bytes for one token across all layers (the textbook formula)."""
    return 2 * model.layers * model.kv_heads * model.head_dim * kv_dtype_bytes


def kv_bytes_per_token_per_gpu(
    model: ModelInfo, tensor_parallel: int, pipeline_parallel: int, kv_dtype_bytes: int = 2
) -> float:
    """KV bytes/token one GPU holds: layers split by PP, KV heads by TP (replicated beyond)."""
    layers = math.ceil(model.layers / pipeline_parallel)
    heads = max(model.kv_heads / tensor_parallel, 1.0)
    return 2 * layers * heads * model.head_dim * kv_dtype_bytes


def tensor_parallel_ok(model: ModelInfo, tensor_parallel: int) -> bool:
    """vLLM's rule: TP divides the attention heads, and divides or is a multiple of the KV heads."""
    return model.attention_heads % tensor_parallel == 0 and (
        model.kv_heads % tensor_parallel == 0 or tensor_parallel % model.kv_heads == 0
    )


def runtime_reserve_bytes(model: ModelInfo, tensor_parallel: int) -> int:
    """Memory vLLM keeps outside weights and KV cache per GPU: CUDA context and non-torch memory,
    the profiled activation peak at the default batch, CUDA graphs, and NCCL buffers under TP.
    An estimate: compare with vLLM's 'GPU KV cache size' log line on a real host."""
    activation = (
        DEFAULT_MAX_BATCHED_TOKENS
        * (2 * model.intermediate_size // tensor_parallel + 4 * model.hidden_size)
        * 2
    )
    nccl = GIB // 2 if tensor_parallel > 1 else 0
    return GIB // 2 + activation + GIB // 2 + nccl


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
    if quantization == "awq":
        assert model.awq is not None
        return model.awq, None
    if quantization == "fp8":
        return (model.fp8, None) if model.fp8 else (model.hf_id, "fp8")
    return model.hf_id, None


def _parallel_layouts(model: ModelInfo, gpus: int, nodes: int) -> list[tuple[int, int]]:
    """(TP, PP) layouts over `gpus` per node x `nodes`: TP a power of two dividing the heads and
    at most one node's GPUs, PP filling the rest; largest TP first."""
    total = gpus * nodes
    layouts = []
    tp = 1
    while tp <= gpus:
        if gpus % tp == 0 and tensor_parallel_ok(model, tp) and total // tp <= model.layers:
            layouts.append((tp, total // tp))
        tp *= 2
    return sorted(layouts, reverse=True)


def _quantizations(model: ModelInfo, gpu: GpuInfo, request: Request) -> list[Quantization]:
    if request.quantization != "auto":
        return [request.quantization]
    if request.dtype != "auto":
        return ["none"]
    options = ["none"]
    if gpu.fp8:
        options.append("fp8")
    elif model.awq:
        options.append("awq")
    return options


@dataclass(frozen=True)
class _Fit:
    tp: int
    pp: int
    quantization: Quantization
    weights: int
    weights_per_gpu: float
    kv_per_gpu: float
    kv_tokens: int


def _fit(
    model: ModelInfo, gpu: GpuInfo, tp: int, pp: int, quantization: Quantization, request: Request
) -> _Fit:
    weights = weights_bytes(model, quantization)
    per_gpu = weights / (tp * pp)
    free = _usable_bytes(gpu, request.gpu_memory_utilization) - per_gpu
    free -= runtime_reserve_bytes(model, tp)
    per_token = kv_bytes_per_token_per_gpu(model, tp, pp, _dtype_bytes(request.kv_cache_dtype))
    tokens = int(max(free, 0) // per_token)
    return _Fit(tp, pp, quantization, weights, per_gpu, max(free, 0), tokens)


def _context(model: ModelInfo, fit: _Fit, request: Request) -> int | None:
    """The max model length this fit serves, or None when it serves too little."""
    if request.max_model_len is not None:
        return request.max_model_len if fit.kv_tokens >= request.max_model_len else None
    if fit.kv_tokens >= model.max_context:
        return model.max_context
    rounded = fit.kv_tokens // 1024 * 1024
    return rounded if rounded >= MIN_DEFAULT_CONTEXT else None


def plan_vllm(
    model: ModelInfo, gpu: GpuInfo, gpus: int, nodes: int = 1, request: Request | None = None
) -> ModelPlan:
    """Plan one vLLM replica over `gpus` GPUs per node on `nodes` nodes; PlanRefused if it
    cannot work, naming concrete alternatives."""
    request = request or Request()
    if gpu.apple or gpu.memory_bytes is None:
        raise PlanRefused(f"vLLM needs NVIDIA GPUs, not {gpu.name}", ["serve it with Ollama"])
    if request.quantization == "awq" and not model.awq:
        raise PlanRefused(
            f"no AWQ checkpoint of {model.name} is in the catalog",
            ["use quantization='fp8'"]
            if gpu.fp8
            else [
                "use quantization='auto' (16-bit on more GPUs)",
                "FP8 on Ada or Hopper GPUs (quantization='fp8')",
            ],
        )
    if request.max_model_len and request.max_model_len > model.max_context:
        raise PlanRefused(
            f"max_model_len={request.max_model_len} is beyond {model.name}'s context of "
            f"{model.max_context} tokens (vLLM refuses it)",
            [f"max_model_len={model.max_context} or less"],
            field="max_model_len",
        )
    layouts = _explicit_layout(model, gpus, nodes, request) or _parallel_layouts(model, gpus, nodes)
    if not layouts:
        raise PlanRefused(
            f"no tensor-parallel size fits {model.name} ({model.attention_heads} attention heads, "
            f"{model.kv_heads} KV heads) on {gpus} GPUs per node",
            [f"use gpus_per_replica={tp}" for tp in _valid_tps(model, 8)[-2:]],
        )
    notes: list[str] = []
    for quantization in _quantizations(model, gpu, request):
        for tp, pp in layouts:
            fit = _fit(model, gpu, tp, pp, quantization, request)
            context = _context(model, fit, request)
            if context is None:
                continue
            if quantization != "none":
                notes.append(
                    f"{quantization.upper()} chosen: {model.name} in 16-bit needs "
                    f"{_gib(weights_bytes(model))} GiB of weights"
                )
            if request.max_model_len is None and context < model.max_context:
                notes.append(
                    f"max_model_len {context} (the model allows {model.max_context}; "
                    "the KV cache holds no more)"
                )
            if model.sliding_window:
                notes.append("sliding-window layers: vLLM holds more tokens than planned")
            return _plan(model, gpu, fit, context, gpus, nodes, request, notes)
    raise _refusal(model, gpu, gpus, nodes, request)


def _explicit_layout(
    model: ModelInfo, gpus: int, nodes: int, request: Request
) -> list[tuple[int, int]]:
    if request.tensor_parallel is None and request.pipeline_parallel is None:
        return []
    total = gpus * nodes
    declared = "tensor_parallel" if request.tensor_parallel else "pipeline_parallel"
    if (request.tensor_parallel or 1) * (request.pipeline_parallel or 1) > total:
        raise PlanRefused(
            f"tensor_parallel x pipeline_parallel = {request.tensor_parallel or 1} x "
            f"{request.pipeline_parallel or 1} needs more GPUs than a replica has: {total} "
            f"({gpus} per node x {nodes} nodes)",
            [f"use tensor_parallel={gpus}, pipeline_parallel={nodes}", "declare more GPUs"],
            field=declared,
        )
    tp = request.tensor_parallel or total // (request.pipeline_parallel or 1)
    pp = request.pipeline_parallel or total // tp
    if tp * pp != total:
        raise PlanRefused(
            f"tensor_parallel x pipeline_parallel = {tp} x {pp} = {tp * pp}, but a replica has "
            f"{total} GPUs ({gpus} per node x {nodes} nodes)",
            [
                f"set gpus_per_replica={tp * pp // nodes}"
                if (tp * pp) % nodes == 0
                else f"use tensor_parallel={gpus}, pipeline_parallel={nodes}"
            ],
            field=declared,
        )
    if not tensor_parallel_ok(model, tp):
        raise PlanRefused(
            f"tensor_parallel={tp} does not divide {model.name}'s {model.attention_heads} "
            f"attention heads and {model.kv_heads} KV heads",
            [f"tensor_parallel={t}" for t in _valid_tps(model, total)[-2:]],
            field="tensor_parallel",
        )
    if pp > model.layers:
        raise PlanRefused(
            f"pipeline_parallel={pp} exceeds {model.layers} layers",
            [f"pipeline_parallel={model.layers} or less"],
            field="pipeline_parallel",
        )
    return [(tp, pp)]


def _valid_tps(model: ModelInfo, limit: int) -> list[int]:
    return [t for t in (1, 2, 4, 8, 16) if t <= limit and tensor_parallel_ok(model, t)]


def _plan(
    model: ModelInfo,
    gpu: GpuInfo,
    fit: _Fit,
    context: int,
    gpus: int,
    nodes: int,
    request: Request,
    notes: list[str],
) -> ModelPlan:
    checkpoint, flag = _checkpoint(model, fit.quantization)
    kv_dtype = request.kv_cache_dtype
    return ModelPlan(
        model=model.name,
        checkpoint=checkpoint,
        engine="vllm",
        gpu=gpu.name,
        gpus=gpus * nodes,
        nodes=nodes,
        tensor_parallel=fit.tp,
        pipeline_parallel=fit.pp,
        quantization=None if fit.quantization == "none" else fit.quantization,
        quantization_flag=flag,
        dtype=request.dtype,
        kv_cache_dtype=kv_dtype,
        max_model_len=context,
        gpu_memory_utilization=request.gpu_memory_utilization,
        weights_gib=_gib(fit.weights),
        weights_gib_per_gpu=_gib(fit.weights_per_gpu),
        kv_bytes_per_token=kv_bytes_per_token(model, _dtype_bytes(kv_dtype)),
        kv_cache_gib_per_gpu=_gib(fit.kv_per_gpu),
        kv_cache_tokens=fit.kv_tokens,
        max_concurrency=round(fit.kv_tokens / context, 2),
        decode_tokens_per_s=round(decode_ceiling(model, gpu, fit.quantization, fit.tp), 1),
        notes=tuple(notes),
    )


def _refusal(
    model: ModelInfo, gpu: GpuInfo, gpus: int, nodes: int, request: Request
) -> PlanRefused:
    total = gpus * nodes
    weights = weights_bytes(
        model, "none" if request.quantization == "auto" else request.quantization
    )
    usable = _usable_bytes(gpu, request.gpu_memory_utilization)
    where = f"{total} x {gpu.name}" if total > 1 else f"one {gpu.name}"
    reason = (
        f"{model.name} needs {_gib(weights)} GiB of weights"
        + (f" plus {request.max_model_len} tokens of KV cache" if request.max_model_len else "")
        + f"; {where} {'hold' if total > 1 else 'holds'} {_gib(usable * total)} GiB at "
        f"gpu_memory_utilization {request.gpu_memory_utilization}"
    )
    alternatives = []
    quantizations = ["none"] if request.quantization == "auto" else [request.quantization]
    for more in (2, 4, 8, 16, 32):
        per_node = min(more, 8)
        more_nodes = max(1, more // 8)
        if more <= total:
            continue
        for tp, pp in _parallel_layouts(model, per_node, more_nodes):
            fit = _fit(model, gpu, tp, pp, quantizations[0], request)
            if _context(model, fit, request):
                layout = f"TP={tp}" + (f" x PP={pp}" if pp > 1 else "")
                alternatives.append(
                    f"use {layout} on {more} GPUs"
                    + (f" ({more_nodes} nodes of 8)" if more_nodes > 1 else "")
                )
                break
        if alternatives:
            break
    if model.awq and request.quantization in ("auto", "none"):
        alternatives.append(f"the AWQ variant ({_gib(weights_bytes(model, 'awq'))} GiB)")
    if gpu.fp8 and request.quantization in ("auto", "none"):
        alternatives.append(f"FP8 ({_gib(weights_bytes(model, 'fp8'))} GiB)")
    if request.max_model_len and request.max_model_len > MIN_DEFAULT_CONTEXT:
        alternatives.append("a smaller max_model_len")
    return PlanRefused(reason, alternatives)


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
    if gpu is None:
        memory = 0
    elif gpu.apple:
        memory = int((memory_gib or 0) * GIB * APPLE_GPU_SHARE)
    else:
        memory = (gpu.memory_bytes or 0) * gpu_count
    context = ollama_context(memory, context_length, model)
    notes: list[str] = []
    if model is None or model.ollama_size_gb is None:
        notes.append(f"{tag} is not in the catalog: its size is known after the pull")
        return ModelPlan(
            model=tag,
            checkpoint=tag,
            engine="ollama",
            gpu=gpu.name if gpu else "cpu",
            gpus=gpu_count if gpu else 0,
            nodes=1,
            tensor_parallel=1,
            pipeline_parallel=1,
            quantization=None,
            dtype="gguf",
            kv_cache_dtype=kv_cache_type,
            max_model_len=context,
            gpu_memory_utilization=1.0,
            weights_gib=0,
            weights_gib_per_gpu=0,
            kv_bytes_per_token=0,
            kv_cache_gib_per_gpu=0,
            kv_cache_tokens=0,
            max_concurrency=num_parallel,
            decode_tokens_per_s=0,
            fits=True,
            notes=tuple(notes),
        )
    kv_bytes = {"f16": 2.0, "q8_0": 1.0, "q4_0": 0.5}[kv_cache_type]
    per_token = int(2 * model.layers * model.kv_heads * model.head_dim * kv_bytes)
    weights = int(model.ollama_size_gb * GB)
    need = weights + per_token * context * num_parallel + OLLAMA_OVERHEAD_BYTES
    fits = memory >= need
    if gpu is None:
        notes.append("no GPU declared: Ollama runs on the CPU")
    elif not fits:
        notes.append(
            f"needs {_gib(need)} GiB with {context} tokens x {num_parallel} parallel, "
            f"{'unified memory gives the GPU' if gpu.apple else 'VRAM holds'} {_gib(memory)} GiB: "
            "layers spill to the CPU and decode slows down; lower context_length or pick a "
            "smaller tag"
        )
    bandwidth = gpu.bandwidth_gbps if gpu else 0
    return ModelPlan(
        model=model.name,
        checkpoint=tag,
        engine="ollama",
        gpu=gpu.name if gpu else "cpu",
        gpus=gpu_count if gpu else 0,
        nodes=1,
        tensor_parallel=1,
        pipeline_parallel=1,
        quantization=model.ollama_quantization,
        dtype="gguf",
        kv_cache_dtype=kv_cache_type,
        max_model_len=context,
        gpu_memory_utilization=1.0,
        weights_gib=_gib(weights),
        weights_gib_per_gpu=_gib(weights / max(gpu_count, 1)),
        kv_bytes_per_token=per_token,
        kv_cache_gib_per_gpu=_gib(max(memory - weights - OLLAMA_OVERHEAD_BYTES, 0)),
        kv_cache_tokens=int(max(memory - weights - OLLAMA_OVERHEAD_BYTES, 0) // per_token),
        max_concurrency=num_parallel,
        decode_tokens_per_s=round(bandwidth * GB / weights, 1) if gpu else 0.0,
        fits=fits or gpu is None,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class MultiNode:
    """This process's place in a replica spread over several nodes (vLLM's native mode)."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int


def vllm_flags(
    plan: ModelPlan,
    *,
    served_names: list[str],
    host: str,
    port: int,
    revision: str | None = None,
    max_num_seqs: int | None = None,
    multinode: MultiNode | None = None,
    backend: str = "mp",
) -> dict[str, object]:
    """The `vllm serve --config` YAML for one process: long flag names without `--`.

    Only what the plan decides or the user set; everything else keeps vLLM's defaults. Secrets
    (the API key, the HF token) are never flags: they come from the unit's environment file.
    """
    flags: dict[str, object] = {
        "model": plan.checkpoint,
        "served-model-name": served_names,
        "host": host,
        "port": port,
        "tensor-parallel-size": plan.tensor_parallel,
        "pipeline-parallel-size": plan.pipeline_parallel,
        "max-model-len": plan.max_model_len,
        "gpu-memory-utilization": plan.gpu_memory_utilization,
        "disable-access-log-for-endpoints": "/health,/metrics",
    }
    if plan.dtype != "auto":
        flags["dtype"] = plan.dtype
    if plan.quantization_flag:
        flags["quantization"] = plan.quantization_flag
    if plan.kv_cache_dtype != "auto":
        flags["kv-cache-dtype"] = plan.kv_cache_dtype
    if revision:
        flags["revision"] = revision
    if max_num_seqs:
        flags["max-num-seqs"] = max_num_seqs
    if backend == "ray" and plan.nodes > 1:
        flags["distributed-executor-backend"] = "ray"
    elif multinode is not None:
        flags.update(
            {
                "nnodes": multinode.nnodes,
                "node-rank": multinode.node_rank,
                "master-addr": multinode.master_addr,
                "master-port": multinode.master_port,
            }
        )
        if multinode.node_rank > 0:
            flags["headless"] = True
    return flags
