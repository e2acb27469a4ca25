"""vLLM's startup memory profile of one GPU, term by term, and the KV cache it leaves.

vLLM loads the weights, runs one profiling forward pass of `max_num_batched_tokens` tokens (and a
sampler pass of `max_num_seqs` rows), measures the peak, and gives the rest of
gpu_memory_utilization x the memory torch sees to the KV cache, in blocks of 16 tokens
(docs/configuration/memory_usage.md; "Memory profiling results" / "Available KV cache memory"
log lines). Each term below says where its number comes from; those fitted on logs name the log
(tests/data/vllm_startup_logs.toml, compared by benchmarks/planner_accuracy.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servekit.catalog import GpuInfo, ModelInfo

GIB = 2**30

BLOCK_SIZE = 16
"""Tokens per KV block, vLLM's default block_size; the cache holds whole blocks."""

TORCH_HIDDEN_BYTES = int(0.42 * GIB)
"""Memory nvidia-smi counts that torch never sees: an RTX 3090 (24576 MiB = 24.0 GiB) logged
total_gpu_memory=23.58GiB (https://github.com/vllm-project/vllm/issues/10517)."""

NON_TORCH_BYTES = int(0.4 * GIB)
"""CUDA context, cuBLAS workspace and other memory outside torch, per GPU. Logged: 0.35 GiB on an
RTX 3090 (vllm#10517), 0.25 GiB on RTX 4090s (vllm#13061), 0.34-0.43 GiB on A100-40GB at TP 4
(https://github.com/vllm-project/vllm/issues/16570). No Hopper log with the breakdown was found:
the same value is used there."""

HOPPER_EXTRA_BYTES = GIB
"""More outside the profile on compute capability 9.0+ (H100/H200): issue 16 reports a 72B model on
2 x H100-80GB at utilization 0.95 logging 19.9k KV tokens, and vllm#21348 (Qwen3-235B FP8 on
4 x H100) came out 8 GiB short; the terms above leave both over the log. No Hopper log with the
breakdown was found: 1 GiB is an allowance that keeps the 72B case under its log."""

ALL_REDUCE_BYTES = GIB
"""NCCL and custom all-reduce buffers (and whatever else a second worker holds) per GPU when TP or
PP > 1. No log isolates them; the one TP > 1 log in the test set (2 x RTX 4090,
https://github.com/vllm-project/vllm/issues/13061) is met only with about 1 GiB here: vLLM sizes
the cache by its smallest worker. An allowance fitted to that log, not a measurement."""

ACTIVATION_HIDDEN_FACTOR = 7
"""Profiling peak per token = 2 bytes x (2 x intermediate / TP + 7 x hidden). Fitted as an upper
envelope to vllm#10517: Llama-3.1-8B's peak minus weights was 2.07 GiB at 20000 tokens and
2.99 GiB at 29000 (about 110 KB a token; the formula gives 115 KB)."""

LOGIT_BYTES = 4
"""The sampler's profiling pass holds fp32 logits for max_num_seqs rows x the vocabulary."""

CUDA_GRAPH_BYTES = GIB // 2
"""CUDA graph pool, counted by the V1 engine's profile (V0 captured graphs after sizing the KV
cache). Logged 0.09 GiB actual, 0.13 GiB estimated for a 27B model at TP 2
(https://github.com/noonghunna/club-3090/issues/1087); 0.5 GiB leaves room for larger models."""

LARGE_GPU_BYTES = 70 * GIB
"""vLLM's batch defaults (vllm/engine/arg_utils.py, EngineArgs.get_batch_defaults): on GPUs with
>= 70 GiB that are not A100, `vllm serve` profiles 8192 tokens and 1024 sequences, elsewhere
2048 tokens and 256 sequences."""

KV_UNCERTAINTY = 0.05
"""The ± the planner states on its KV tokens: its target is within -15 %/+5 % of the logs."""


def default_batch(gpu: GpuInfo) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) `vllm serve` uses on this GPU by default."""
    memory = gpu.memory_bytes or 0
    if memory >= LARGE_GPU_BYTES and not gpu.name.startswith("A100"):
        return 8192, 1024
    return 2048, 256


@dataclass(frozen=True)
class MemoryProfile:
    """One GPU's memory as vLLM accounts it at startup, in bytes, and the KV tokens left."""

    usable: float
    weights: float
    non_torch: float
    activation: float
    logits: float
    cuda_graphs: float
    kv_cache: float
    kv_bytes_per_token: float
    kv_tokens: int


def kv_bytes_per_token_per_gpu(
    model: ModelInfo, tensor_parallel: int, pipeline_parallel: int, kv_dtype_bytes: int = 2
) -> float:
    """KV bytes one GPU holds per token: layers split by PP; KV heads by TP (replicated beyond).
    MLA models (kv_lora_rank set) cache one latent vector per layer, the same on every TP rank."""
    layers = math.ceil(model.layers / pipeline_parallel)
    if model.kv_lora_rank:
        return layers * (model.kv_lora_rank + model.qk_rope_head_dim) * kv_dtype_bytes
    heads = max(model.kv_heads / tensor_parallel, 1.0)
    return 2 * layers * heads * model.head_dim * kv_dtype_bytes


def activation_bytes(model: ModelInfo, tokens: int, tensor_parallel: int) -> int:
    """The profiling pass's activation peak over the weights (see ACTIVATION_HIDDEN_FACTOR);
    an MoE's MLP runs `experts_per_token` experts for every token."""
    intermediate = model.intermediate_size * max(model.experts_per_token, 1)
    per_token = 2 * (
        2 * intermediate // tensor_parallel + ACTIVATION_HIDDEN_FACTOR * model.hidden_size
    )
    return tokens * per_token


def memory_profile(
    model: ModelInfo,
    gpu: GpuInfo,
    parallel: tuple[int, int],
    weights_per_gpu: float,
    utilization: float,
    kv_dtype_bytes: int = 2,
    profile_tokens: int | None = None,
    engine: str = "v1",
) -> MemoryProfile:
    """One GPU's startup profile for `parallel` = (TP, PP); profile_tokens None: vLLM's default
    max_num_batched_tokens for the GPU (V0 logs pass what they profiled)."""
    assert gpu.memory_bytes is not None
    tp, pp = parallel
    default_tokens, max_num_seqs = default_batch(gpu)
    usable = utilization * (gpu.memory_bytes - TORCH_HIDDEN_BYTES)
    non_torch = NON_TORCH_BYTES + (ALL_REDUCE_BYTES if tp * pp > 1 else 0)
    if gpu.compute_capability_tuple >= (9, 0):
        non_torch += HOPPER_EXTRA_BYTES
    activation = activation_bytes(model, profile_tokens or default_tokens, tp)
    logits = max_num_seqs * model.vocab_size * LOGIT_BYTES
    graphs = CUDA_GRAPH_BYTES if engine == "v1" else 0
    kv_cache = max(usable - weights_per_gpu - non_torch - activation - logits - graphs, 0.0)
    per_token = kv_bytes_per_token_per_gpu(model, tp, pp, kv_dtype_bytes)
    blocks = int(kv_cache // (per_token * BLOCK_SIZE))
    return MemoryProfile(
        usable=usable,
        weights=weights_per_gpu,
        non_torch=non_torch,
        activation=activation,
        logits=logits,
        cuda_graphs=graphs,
        kv_cache=kv_cache,
        kv_bytes_per_token=per_token,
        kv_tokens=blocks * BLOCK_SIZE,
    )
