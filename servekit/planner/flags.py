"""The `vllm serve --config` flags of one vLLM process, from its plan."""

from __future__ import annotations

from dataclasses import dataclass

from servekit.planner.model import ModelPlan


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
