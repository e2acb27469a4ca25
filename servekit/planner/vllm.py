"""Planning a model on vLLM: the parallel layout, the quantization and the context that fit one
replica's GPUs, or a refusal with concrete alternatives."""

from __future__ import annotations

from dataclasses import dataclass

from servekit.catalog import GpuInfo, ModelInfo
from servekit.planner.model import (
    MIN_DEFAULT_CONTEXT,
    ModelPlan,
    PlanRefused,
    Quantization,
    Request,
    _checkpoint,
    _dtype_bytes,
    _gib,
    _usable_bytes,
    decode_ceiling,
    kv_bytes_per_token,
    tensor_parallel_ok,
    weights_bytes,
)
from servekit.planner.profile import KV_UNCERTAINTY, Profiling, memory_profile


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
    if model.native_quantization:
        return [model.native_quantization]  # the checkpoint ships quantized
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
    model: ModelInfo,
    gpu: GpuInfo,
    tp: int,
    pp: int,
    quantization: Quantization,
    request: Request,
    profiling: Profiling | None = None,
) -> _Fit:
    """Weights and KV cache of one layout, from vLLM's startup memory profile (profile.py)."""
    weights = weights_bytes(model, quantization)
    per_gpu = weights / (tp * pp)
    quantized = quantization != "none" or model.native_quantization is not None
    profile = memory_profile(
        model,
        gpu,
        (tp, pp),
        per_gpu,
        request.gpu_memory_utilization,
        _dtype_bytes(request.kv_cache_dtype),
        profiling,
        quantized_from_per_gpu=2 * model.params / (tp * pp) if quantized else 0.0,
    )
    return _Fit(tp, pp, quantization, weights, per_gpu, profile.kv_cache, profile.kv_tokens)


def kv_cache_tokens(
    model: ModelInfo,
    gpu: GpuInfo,
    tp: int,
    pp: int,
    request: Request,
    profiling: Profiling | None = None,
) -> int:
    """The KV tokens vLLM's startup would log for this layout ("GPU KV cache size")."""
    quantization = "none" if request.quantization == "auto" else request.quantization
    return _fit(model, gpu, tp, pp, quantization, request, profiling).kv_tokens


def _startable(fit: _Fit) -> int:
    """The longest request vLLM surely starts with: the planned KV tokens less their uncertainty
    (vLLM refuses a max_model_len the KV cache cannot hold once)."""
    return int(fit.kv_tokens / (1 + KV_UNCERTAINTY))


def _context(model: ModelInfo, fit: _Fit, request: Request) -> int | None:
    """The max model length this fit serves, or None when it serves too little."""
    startable = _startable(fit)
    if request.max_model_len is not None:
        return request.max_model_len if startable >= request.max_model_len else None
    if startable >= model.max_context:
        return model.max_context
    rounded = startable // 1024 * 1024
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
            if fit.kv_tokens < 2 * context:
                notes.append(_tight_note(fit, context))
            return _plan(model, gpu, fit, context, gpus, nodes, request, notes)
    if request.max_model_len is not None:
        _refuse_context(model, gpu, layouts, request)
    raise _refusal(model, gpu, gpus, nodes, request)


def _refuse_context(
    model: ModelInfo, gpu: GpuInfo, layouts: list[tuple[int, int]], request: Request
) -> None:
    """The weights fit but the KV cache cannot hold one max_model_len request: vLLM would
    refuse at startup. Refuse the field now, with the length that starts and other fixes."""
    quantizations = _quantizations(model, gpu, request)
    fits = [_fit(model, gpu, tp, pp, q, request) for q in quantizations for tp, pp in layouts]
    best = max((_startable(fit) for fit in fits), default=0) // 1024 * 1024
    if best < MIN_DEFAULT_CONTEXT:
        return
    fixes = [f"max_model_len={best} (what this KV cache holds, less 5 %)"]
    if request.kv_cache_dtype != "fp8":
        fixes.append("kv_cache_dtype='fp8' (twice the tokens)")
    fixes.append("more GPUs per replica")
    raise PlanRefused(
        f"max_model_len={request.max_model_len} does not fit the KV cache of {model.name} on "
        f"{gpu.name} (planned {max(fit.kv_tokens for fit in fits)} tokens ±5 %): vLLM refuses "
        "to start",
        fixes,
        field="max_model_len",
    )


def _tight_note(fit: _Fit, context: int) -> str:
    return (
        f"tight: the KV cache holds {fit.kv_tokens} tokens, {fit.kv_tokens / context:.1f} "
        f"requests of {context}; more GPUs, kv_cache_dtype='fp8' or a quantized checkpoint "
        "give it room"
    )


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
        kv_tokens_uncertainty=KV_UNCERTAINTY,
        tight=fit.kv_tokens < 2 * context,
        max_concurrency=round(fit.kv_tokens / context, 2),
        decode_tokens_per_s=round(decode_ceiling(model, gpu, fit.quantization, fit.tp), 1),
        notes=tuple(notes),
    )


def _refusal(
    model: ModelInfo, gpu: GpuInfo, gpus: int, nodes: int, request: Request
) -> PlanRefused:
    total = gpus * nodes
    quantization = _quantizations(model, gpu, request)[0]
    weights = weights_bytes(model, quantization)
    usable = _usable_bytes(gpu, request.gpu_memory_utilization)
    where = f"{total} x {gpu.name}" if total > 1 else f"one {gpu.name}"
    reason = (
        f"{model.name} needs {_gib(weights)} GiB of weights and vLLM's runtime memory"
        + (f" plus {request.max_model_len} tokens of KV cache" if request.max_model_len else "")
        + f"; {where} {'hold' if total > 1 else 'holds'} {_gib(usable * total)} GiB at "
        f"gpu_memory_utilization {request.gpu_memory_utilization}"
    )
    alternatives = []
    for more in (2, 4, 8, 16, 32):
        per_node = min(more, 8)
        more_nodes = max(1, more // 8)
        if more <= total:
            continue
        for tp, pp in _parallel_layouts(model, per_node, more_nodes):
            fit = _fit(model, gpu, tp, pp, quantization, request)
            if _context(model, fit, request):
                layout = f"TP={tp}" + (f" x PP={pp}" if pp > 1 else "")
                alternatives.append(
                    f"use {layout} on {more} GPUs"
                    + (f" ({more_nodes} nodes of 8)" if more_nodes > 1 else "")
                )
                break
        if alternatives:
            break
    requantizable = not model.native_quantization and request.quantization in ("auto", "none")
    if model.awq and requantizable:
        alternatives.append(f"the AWQ variant ({_gib(weights_bytes(model, 'awq'))} GiB)")
    if gpu.fp8 and requantizable:
        alternatives.append(f"FP8 ({_gib(weights_bytes(model, 'fp8'))} GiB)")
    if request.max_model_len and request.max_model_len > MIN_DEFAULT_CONTEXT:
        alternatives.append("a smaller max_model_len")
    return PlanRefused(reason, alternatives)
