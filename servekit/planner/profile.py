"""vLLM's startup memory profile of one GPU, term by term, and the KV cache it leaves.

vLLM loads the weights, runs one profiling forward pass of `max_num_batched_tokens` tokens (and a
sampler pass of `max_num_seqs` rows), measures the peak, and gives the rest of
gpu_memory_utilization x the memory torch sees to the KV cache, in blocks of 16 tokens
(docs/configuration/memory_usage.md; "Memory profiling results" / "Available KV cache memory"
log lines); from vLLM 0.21 on it also takes its CUDA graph estimate from that rest. Terms changed
between vLLM versions: `Profiling.version` says which vLLM a profile is for (the pinned 0.33 for
plans, the logged one when a log is compared). Each term below says where its number comes from;
those fitted on logs name the log (tests/data/vllm_startup_logs*.toml, compared by
benchmarks/planner_accuracy.py).
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
(https://github.com/vllm-project/vllm/issues/16570), 0.13-0.14 GiB on an H100 at TP 1 and
0.54-0.55 GiB at TP 2 (llm-d/llm-d-benchmark config_explorer/empirical-vllm-memory-results.md,
vLLM 0.11.0): no Hopper-specific term is needed."""

ALL_REDUCE_BYTES_PER_RANK = GIB // 4
"""NCCL and custom all-reduce buffers per GPU, per rank of the tensor-parallel group (none at TP 1),
where the GPUs have peer-to-peer access (GpuInfo.peer_to_peer). No log isolates them: fitted so
that 4 x RTX PRO 6000 at TP 4 (non-torch logged 1.70 GiB) and 2 x RTX PRO 6000 at TP 2 (1.66 GiB
for non-torch and activations together) stay near their logs (kubesimplify/website,
content/blog/running-a-big-llm-across-multiple-gpus-with-vllm.md and
running-a-single-llm-across-two-gpus-with-vllm.md). Without P2P, vLLM disables its custom
all-reduce and NCCL stages through host memory: 4 x RTX 3090 at TP 4 left 0.12 GiB for
everything outside weights and KV (https://github.com/leadawon/LAMBO, backend_server_exper99.log),
2 x T4 on Kaggle, whose log says "lacks GPU P2P capability", 0.64 GiB at TP 2
(https://github.com/trietnguyeminh/Submission---EXACT--IJCNN, v12-1-inference.ipynb)."""

QUANTIZED_FORWARD_FRACTION = 0.016
"""A quantized checkpoint's profiling pass peaks above a 16-bit one's activations by up to 1.6 % of
the weights' 16-bit size per GPU (QUANTIZED_FORWARD_CAP_BYTES at most). Unexplained: no log
breaks the peak down; the quantized kernels' temporaries (dequantization, repacking, activation
scales) are candidates. Fitted as the upper envelope of the quantized logs whose forward peak is
not hidden under vLLM 0.10-0.12's sampler peak (tests/data/vllm_startup_logs*.toml): they leave
0.98 GiB more than the 16-bit terms for DeepSeek-R1-Distill-Qwen-32B FP8 on an L40S (vLLM 0.11.0),
0.72 GiB for Qwen2.5-Coder-32B AWQ on an A100-40GB (0.13.0), 0.65 GiB for Qwen3-30B-A3B AWQ on an
RTX 3090 (0.10.0), 0.42 GiB for Qwen3-32B AWQ on an A100 (0.19.0), 0.83 GiB for Qwen3-235B FP8
at TP 4 (0.27.1), 0.04 GiB for Qwen2.5-7B AWQ on an RTX 4080 (0.26.0). Plans of quantized
checkpoints keep it, on the pinned vLLM too: the direction that never promises too much."""

QUANTIZED_FORWARD_CAP_BYTES = GIB
"""The most QUANTIZED_FORWARD_FRACTION keeps per GPU: the largest logged (0.98 GiB, see there);
Qwen3-235B FP8 at TP 4, 109 GiB of 16-bit weights per GPU, left 0.83."""

PIPELINE_BYTES = GIB
"""Buffers for activations in flight between pipeline stages, per GPU when PP > 1: the same
Qwen3-32B on the same two GPUs and budget left 3.03 GiB outside weights and KV at PP 2 against
1.66 GiB at TP 2 (kubesimplify/website, running-a-single-llm-across-two-gpus-with-vllm.md)."""

ACTIVATION_HIDDEN_FACTOR = 7
"""Profiling peak per token = 2 bytes x (2 x intermediate / TP + 7 x hidden). Fitted as an upper
envelope to vllm#10517: Llama-3.1-8B's peak minus weights was 2.07 GiB at 20000 tokens and
2.99 GiB at 29000 (about 110 KB a token; the formula gives 115 KB)."""

LOGIT_BYTES = 4
"""The sampler's profiling pass holds fp32 logits for max_num_seqs rows x the vocabulary."""

OLD_SAMPLER_COPIES = 9.7
"""vLLM 0.10-0.11 on GPUs with the large batch defaults (8192 tokens, 1024 sequences) peaked at
9.6-9.7 x the fp32 logits of 1024 sequences during profiling, and not above it: 4.76 GiB for
Llama-3.1-8B, 5.64 GiB for Qwen3-32B, 7.38 GiB for gpt-oss-20b on an H100
(https://github.com/llm-d/llm-d-benchmark/blob/main/config_explorer/empirical-vllm-memory-results.md,
vLLM 0.11.0), and Qwen3-30B-A3B's log on an H100 leaves the same 5.6 GiB (vLLM 0.10.2,
tests/data/vllm_startup_logs_more.toml). vLLM 0.27.1 on 95 GiB RTX PRO 6000s with the same
defaults left 1.66 GiB for all of it (kubesimplify, tests/data/vllm_startup_logs.toml). vLLM 0.12.0
still has it: Qwen3-30B-A3B on a 95 GiB RTX PRO 6000 at 1024 sequences left 5.64 GiB between
utilization x memory, weights and KV cache (https://github.com/2215860382/VedioSifter/blob/main/vllm_server.log).
No log on 0.13-0.26 with those defaults was found: applied to logs of 0.12 and older only."""

LAST_OLD_SAMPLER_VLLM = (0, 12)
"""The newest vLLM a log shows OLD_SAMPLER_COPIES on (see there)."""

RECENT_VLLM_ALLOWANCE_BYTES = int(0.7 * GIB)
"""Kept per GPU for vLLM newer than 0.27 on large-batch GPUs, unexplained: issue 16 (servekit)
quotes Qwen2.5-72B on 2 x H100-80GB at utilization 0.95 logging 19.9k KV tokens, 0.7 GiB a GPU
below what the terms above give for a recent vLLM. No log of vLLM 0.28+ with the breakdown was
found (Dec 2026), and the H100 logs with one (llm-d, vLLM 0.11.0) need no allowance: it is not a
Hopper term (it replaces HOPPER_EXTRA, whose 1.6 GiB was this, the CUDA graph estimate and the
0.10-0.11 sampler peak together). Replace it when a 0.33 host's doctor log is at hand."""

PINNED_VLLM = (0, 33)
"""The vLLM version servekit deploys (servekit/catalog/versions.toml), which plans model."""

CUDA_GRAPH_BYTES = int(0.4 * GIB)
"""vLLM's estimate of the CUDA graph pool, per GPU, which vLLM >= 0.21 takes from the KV cache
before sizing it (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS, on by default: vLLM 0.27.1 logs "CUDA
graph memory profiling is enabled (default since v0.21.0) ... --gpu-memory-utilization=0.8200 is
equivalent to ... 0.8048 without", with "Estimated CUDA graph memory: 0.36 GiB total" on a 24 GB
card, https://github.com/gpustack/runner/pull/251; the deduction in vllm/v1/worker/gpu_worker.py
is quoted in https://github.com/MiaAI-Lab/GLM-5.3-Flash-EXL3-2x-DGX-Sparks/pull/25; the estimate
runs high, https://github.com/vllm-project/vllm/issues/45178). Used on GPUs that profile the small
batch (up to 256 sequences captured)."""

CUDA_GRAPH_LARGE_BYTES = int(1.0 * GIB)
"""The same estimate on GPUs that profile 1024 sequences (LARGE_GPU_BYTES): vLLM logged 1.32 GiB
estimated (1.34 actual) on an 80 GB H100, and the KV cache it kept (43.4 GiB) is utilization x
memory - weights - activation - non-torch - that estimate
(https://github.com/vllm-project/vllm/issues/50722). That model is a hybrid whose estimate is
inflated (https://github.com/vllm-project/vllm/issues/50780); 1.0 GiB is taken for dense ones."""

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


def cuda_graph_bytes(gpu: GpuInfo) -> float:
    """The CUDA graph estimate vLLM deducts from this GPU's KV cache (see CUDA_GRAPH_BYTES)."""
    large = default_batch(gpu)[1] > 256
    return float(CUDA_GRAPH_LARGE_BYTES if large else CUDA_GRAPH_BYTES)


@dataclass(frozen=True)
class Profiling:
    """How vLLM profiles: None takes `vllm serve`'s default for the GPU. `engine` names the
    engine a log came from ("v0": the old engine, before the V1 defaults)."""

    tokens: int | None = None
    max_num_seqs: int | None = None
    engine: str = "v1"
    version: tuple[int, int] = PINNED_VLLM
    cuda_graph_estimate: bool | None = None
    """vLLM takes its CUDA graph estimate from the KV cache: None follows the version (V1 from
    0.21 on, by default); a log whose own arithmetic shows otherwise says so."""
    block_size: int = BLOCK_SIZE
    enforce_eager: bool = False
    """--enforce-eager: vLLM captures no CUDA graphs, so it has no graph estimate to deduct."""
    peer_to_peer: bool | None = None
    """The GPUs reach each other directly: None follows the GPU's catalog entry; a log that says
    "lacks GPU P2P capability" says False (see ALL_REDUCE_BYTES_PER_RANK)."""

    def deducts_cuda_graphs(self) -> bool:
        if self.cuda_graph_estimate is not None:
            return self.cuda_graph_estimate
        if self.enforce_eager:
            return False
        return self.engine != "v0" and self.version >= (0, 21)


def old_sampler_peak(gpu: GpuInfo, profiling: Profiling) -> bool:
    """Whether this profile is one of vLLM 0.10-0.12's with 1024 sequences (OLD_SAMPLER_COPIES)."""
    seqs = profiling.max_num_seqs or default_batch(gpu)[1]
    old = profiling.version <= LAST_OLD_SAMPLER_VLLM
    return profiling.engine != "v0" and old and seqs > 256


def sampler_bytes(model: ModelInfo, gpu: GpuInfo, profiling: Profiling) -> float:
    """The sampler's profiling peak: fp32 logits for max_num_seqs rows (OLD_SAMPLER_COPIES of
    them in vLLM 0.10-0.12 with 1024 sequences)."""
    seqs = profiling.max_num_seqs or default_batch(gpu)[1]
    copies = OLD_SAMPLER_COPIES if old_sampler_peak(gpu, profiling) else 1.0
    return copies * seqs * model.vocab_size * LOGIT_BYTES


def unexplained_bytes(gpu: GpuInfo, profiling: Profiling) -> float:
    """RECENT_VLLM_ALLOWANCE_BYTES where it applies: vLLM newer than every log with a breakdown,
    on a GPU with the large batch defaults."""
    large = default_batch(gpu)[1] > 256
    newest_measured = (0, 27)
    return RECENT_VLLM_ALLOWANCE_BYTES if large and profiling.version > newest_measured else 0.0


@dataclass(frozen=True)
class MemoryProfile:
    """One GPU's memory as vLLM accounts it at startup, in bytes, and the KV tokens left."""

    usable: float
    weights: float
    non_torch: float
    activation: float
    logits: float
    cuda_graph: float
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


def all_reduce_bytes(gpu: GpuInfo, tensor_parallel: int, profiling: Profiling) -> float:
    """All-reduce buffers per GPU (see ALL_REDUCE_BYTES_PER_RANK): none at TP 1 or without P2P."""
    peer_to_peer = profiling.peer_to_peer
    if peer_to_peer is None:
        peer_to_peer = gpu.peer_to_peer
    if tensor_parallel == 1 or not peer_to_peer:
        return 0.0
    return float(ALL_REDUCE_BYTES_PER_RANK * tensor_parallel)


def quantized_forward_bytes(sixteen_bit_weights_per_gpu: float) -> float:
    """What a quantized checkpoint's profiling pass keeps beyond a 16-bit one's (see
    QUANTIZED_FORWARD_FRACTION); 0 for a 16-bit checkpoint (pass 0)."""
    return min(
        QUANTIZED_FORWARD_FRACTION * sixteen_bit_weights_per_gpu, QUANTIZED_FORWARD_CAP_BYTES
    )


def memory_profile(
    model: ModelInfo,
    gpu: GpuInfo,
    parallel: tuple[int, int],
    weights_per_gpu: float,
    utilization: float,
    kv_dtype_bytes: int = 2,
    profiling: Profiling | None = None,
    quantized_from_per_gpu: float = 0.0,
) -> MemoryProfile:
    """One GPU's startup profile for `parallel` = (TP, PP). `quantized_from_per_gpu`: for a
    quantized checkpoint, the 16-bit size of its weights per GPU (0 for a 16-bit one)."""
    assert gpu.memory_bytes is not None
    tp, pp = parallel
    profiling = profiling or Profiling()
    default_tokens = default_batch(gpu)[0]
    usable = utilization * (gpu.memory_bytes - TORCH_HIDDEN_BYTES)
    non_torch = float(NON_TORCH_BYTES) + all_reduce_bytes(gpu, tp, profiling)
    non_torch += PIPELINE_BYTES if pp > 1 else 0
    non_torch += model.runtime_extra_gib * GIB / (tp * pp)  # per model, from its logs (catalog)
    activation = float(activation_bytes(model, profiling.tokens or default_tokens, tp))
    activation += quantized_forward_bytes(quantized_from_per_gpu)
    logits = sampler_bytes(model, gpu, profiling)
    if old_sampler_peak(gpu, profiling):
        activation = max(activation - logits, 0.0)  # one peak: the larger of the two passes
    non_torch += unexplained_bytes(gpu, profiling)
    cuda_graph = cuda_graph_bytes(gpu) if profiling.deducts_cuda_graphs() else 0.0
    kv_cache = max(usable - weights_per_gpu - non_torch - activation - logits - cuda_graph, 0.0)
    per_token = kv_bytes_per_token_per_gpu(model, tp, pp, kv_dtype_bytes)
    block = profiling.block_size
    blocks = int(kv_cache // (per_token * block))
    return MemoryProfile(
        usable=usable,
        weights=weights_per_gpu,
        non_torch=non_torch,
        activation=activation,
        logits=logits,
        cuda_graph=cuda_graph,
        kv_cache=kv_cache,
        kv_bytes_per_token=per_token,
        kv_tokens=blocks * block,
    )
