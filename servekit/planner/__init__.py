"""Capacity planning: will a model fit, with which parallelism and quantization, for how many
concurrent requests, and how fast can one stream decode at best. Pure functions, no I/O.

Formulas (vLLM's memory model):
- weights = params x bytes/param (bf16/fp16 2, fp8 1, AWQ int4 ~0.52 on the quantized linear
  layers; embeddings and an untied head stay 16-bit for AWQ and FP8), split over TP x PP GPUs;
- KV bytes/token = 2 x layers x KV heads x head dim x bytes of the KV dtype; per GPU the layers are
  split by PP and the KV heads by TP while TP <= KV heads (replicated beyond);
- KV capacity per GPU = vLLM's startup profile (profile.py): gpu_memory_utilization x the memory
  torch sees - weights - non-torch memory (+ all-reduce buffers when parallel) - the activation
  peak at max_num_batched_tokens - sampler logits - vLLM's CUDA graph estimate (0.21+) - an
  allowance for vLLM newer than any measured log; tokens = whole 16-token blocks;
  worst-case concurrency = tokens / max_model_len; fewer than 2 full requests is "tight";
- decode ceiling (one stream) = memory bandwidth x TP / bytes read per token (weights only).
"""

from servekit.planner.flags import MultiNode as MultiNode
from servekit.planner.flags import vllm_flags as vllm_flags
from servekit.planner.model import APPLE_GPU_SHARE as APPLE_GPU_SHARE
from servekit.planner.model import AWQ_BYTES_PER_PARAM as AWQ_BYTES_PER_PARAM
from servekit.planner.model import GB as GB
from servekit.planner.model import GIB as GIB
from servekit.planner.model import MIN_DEFAULT_CONTEXT as MIN_DEFAULT_CONTEXT
from servekit.planner.model import OLLAMA_OVERHEAD_BYTES as OLLAMA_OVERHEAD_BYTES
from servekit.planner.model import ModelPlan as ModelPlan
from servekit.planner.model import PlanRefused as PlanRefused
from servekit.planner.model import Quantization as Quantization
from servekit.planner.model import Request as Request
from servekit.planner.model import decode_ceiling as decode_ceiling
from servekit.planner.model import kv_bytes_per_token as kv_bytes_per_token
from servekit.planner.model import tensor_parallel_ok as tensor_parallel_ok
from servekit.planner.model import weights_bytes as weights_bytes
from servekit.planner.ollama import ollama_context as ollama_context
from servekit.planner.ollama import ollama_need_bytes as ollama_need_bytes
from servekit.planner.ollama import plan_ollama as plan_ollama
from servekit.planner.profile import ALL_REDUCE_BYTES_PER_RANK as ALL_REDUCE_BYTES_PER_RANK
from servekit.planner.profile import BLOCK_SIZE as BLOCK_SIZE
from servekit.planner.profile import NON_TORCH_BYTES as NON_TORCH_BYTES
from servekit.planner.profile import OLD_SAMPLER_COPIES as OLD_SAMPLER_COPIES
from servekit.planner.profile import PINNED_VLLM as PINNED_VLLM
from servekit.planner.profile import QUANTIZED_FORWARD_CAP_BYTES as QUANTIZED_FORWARD_CAP_BYTES
from servekit.planner.profile import MemoryProfile as MemoryProfile
from servekit.planner.profile import Profiling as Profiling
from servekit.planner.profile import cuda_graph_bytes as cuda_graph_bytes
from servekit.planner.profile import kv_bytes_per_token_per_gpu as kv_bytes_per_token_per_gpu
from servekit.planner.profile import memory_profile as memory_profile
from servekit.planner.profile import old_sampler_peak as old_sampler_peak
from servekit.planner.profile import quantized_forward_bytes as quantized_forward_bytes
from servekit.planner.profile import sampler_bytes as sampler_bytes
from servekit.planner.vllm import kv_cache_tokens as kv_cache_tokens
from servekit.planner.vllm import plan_vllm as plan_vllm
