"""Placing a vLLM-served model: resolve the model, pick the GPUs of a replica, plan it, group hosts
into replicas, and give each node of each replica its process (GPUs, port, flags, environment)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from servekit import catalog, planner
from servekit.catalog import GpuInfo, ModelInfo
from servekit.errors import Problem
from servekit.hostplan import SecretSource, VllmInstance
from servekit.placement.state import PlacementState, ServeSummary, secret_source
from servekit.spec import (
    RAY_FIXED_PORTS,
    RAY_PORT,
    RAY_WORKER_PORTS,
    VLLM_MASTER_PORT,
    Serve,
)
from servekit.vllm_layout import LAYOUT
from servekit.weights import locate

Role = Literal["server", "worker", "ray-worker"]


@dataclass(frozen=True)
class Replica:
    """One replica of a served model: the nodes it spans and what each node runs."""

    serve: Serve
    index: int
    name: str
    number: int
    nodes: list[str]
    per_node: int
    plan: planner.ModelPlan
    served_names: list[str]
    shared: bool

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def multinode(self) -> bool:
        return len(self.nodes) > 1

    @property
    def ready_timeout_s(self) -> int:
        """How long vLLM may take to load: longer for larger weights and across nodes."""
        ready = min(3600, 600 + int(15 * self.plan.weights_gib))
        return ready * (3 if self.multinode else 2) // 2


def plan_vllm(state: PlacementState, index: int, serve: Serve) -> None:
    """Plan one vLLM-served model and place its replicas; problems go to `state.problems`."""
    name = state.fleet.serve_name(index)
    hosts = state.fleet.hosts_of(serve)
    model = _resolve(state, index, serve)
    if model is None:
        return
    shape = _replica_gpus(state, index, serve, hosts)
    if shape is None:
        return
    gpu, per_replica = shape
    plan = _model_plan(state, index, serve, model, gpu, per_replica)
    if plan is None:
        return
    names = served_names(serve, model, plan)
    replicas = place(state, index, serve, hosts, per_replica, serve.nodes_per_replica)
    if not replicas:
        return
    on_host = Counter(h for r in replicas for h in r)
    for number, nodes in enumerate(replicas):
        shared = any(on_host[h] > 1 for h in nodes)
        replica = Replica(serve, index, name, number, nodes, per_replica, plan, names, shared)
        add_replica(state, replica)
    state.summaries.append(
        ServeSummary(
            name=name,
            engine="vllm",
            plan=plan,
            replicas=replicas,
            port=serve.engine_port,
            served_names=names,
            cost_usd_hour=state.cost([h for r in replicas for h in r]),
            routing=serve.routing,
        )
    )


def _resolve(state: PlacementState, index: int, serve: Serve) -> ModelInfo | None:
    """The model's architecture (catalog or config.json), or None with a problem."""
    try:
        return state.resolve(serve.model, state.fleet)
    except catalog.CatalogError as error:
        state.problems.append(
            Problem(
                f"serve[{index}].model",
                str(error),
                "use a model from servekit/catalog/models.toml or a Hugging Face id whose "
                "config.json is readable (local path, HF cache, or the Hub)",
            )
        )
        return None


def _replica_gpus(
    state: PlacementState, index: int, serve: Serve, hosts: list[str]
) -> tuple[GpuInfo, int] | None:
    """The GPU model of the hosts and how many GPUs of a node one replica takes."""
    field_name = f"serve[{index}]"
    gpus = {(g.info.name, g.count) for h in hosts if (g := state.gpu_of(h))}
    if len(gpus) != 1:
        state.problems.append(
            Problem(
                f"{field_name}.hosts",
                f"hosts mix GPU models or counts: {sorted(gpus)}",
                "serve one model on identical machines (split it into two Serve entries)",
            )
        )
        return None
    ((gpu_name, per_node),) = gpus
    per_replica = serve.gpus_per_replica or min(len(state.hosts[h].free_gpus) for h in hosts)
    if per_replica == 0:
        state.problems.append(
            Problem(
                f"{field_name}.hosts",
                "earlier entries took every GPU of its hosts",
                "set gpus_per_replica on the entries that share a node",
            )
        )
        return None
    if per_replica > per_node:
        state.problems.append(
            Problem(
                f"{field_name}.gpus_per_replica",
                f"{per_replica} GPUs per replica, but a node has {per_node}",
                f"use gpus_per_replica<={per_node}, or nodes_per_replica for more",
            )
        )
        return None
    return catalog.gpu(gpu_name), per_replica


def _model_plan(
    state: PlacementState,
    index: int,
    serve: Serve,
    model: ModelInfo,
    gpu: GpuInfo,
    per_replica: int,
) -> planner.ModelPlan | None:
    """The capacity plan of one replica, or None with the planner's refusal as a problem."""
    request = planner.Request(
        max_model_len=serve.max_model_len,
        dtype=serve.dtype,
        quantization=serve.quantization,
        kv_cache_dtype=serve.kv_cache_dtype,
        gpu_memory_utilization=serve.gpu_memory_utilization,
        tensor_parallel=serve.tensor_parallel,
        pipeline_parallel=serve.pipeline_parallel,
    )
    try:
        return planner.plan_vllm(model, gpu, per_replica, serve.nodes_per_replica, request)
    except planner.PlanRefused as refused:
        state.problems.append(
            Problem(
                f"serve[{index}].{refused.field}",
                refused.reason,
                ", or ".join(refused.alternatives) or "use larger GPUs",
            )
        )
        return None


def served_names(serve: Serve, model: ModelInfo, plan: planner.ModelPlan) -> list[str]:
    """The names the model answers to: its Ollama tag (when it replaces an Ollama model), its
    Hugging Face id, the declared extra names, and the checkpoint actually served."""
    names = [model.hf_id]
    tag = model.ollama_tag
    if tag and catalog.normalise_ollama_tag(serve.model) == catalog.normalise_ollama_tag(tag):
        names.insert(0, tag)
    names += serve.served_names
    if plan.checkpoint != model.hf_id:
        names.append(plan.checkpoint)
    return list(dict.fromkeys(names))


def place(
    state: PlacementState,
    index: int,
    serve: Serve,
    hosts: list[str],
    per_replica: int,
    nodes: int,
) -> list[list[str]]:
    """Hosts of each replica: groups of `nodes` hosts in declaration order, as many replicas
    per group as their free GPUs hold (up to `replicas` when declared)."""
    free = {h: len(state.hosts[h].free_gpus) for h in hosts}
    groups = [hosts[i : i + nodes] for i in range(0, len(hosts) - nodes + 1, nodes)]
    replicas: list[list[str]] = []
    for group in groups:
        while all(free[h] >= per_replica for h in group) and (
            serve.replicas is None or len(replicas) < serve.replicas
        ):
            replicas.append(group)
            for h in group:
                free[h] -= per_replica
    wanted = serve.replicas or 1
    if len(replicas) < wanted:
        state.problems.append(
            Problem(
                f"serve[{index}].replicas",
                f"{wanted} replica(s) of {nodes} node(s) x {per_replica} GPU(s) wanted, "
                f"{len(replicas)} fit on {', '.join(hosts)} (GPUs taken by earlier "
                "entries count)",
                "add machines, lower replicas or gpus_per_replica",
            )
        )
        return []
    return replicas


def add_replica(state: PlacementState, replica: Replica) -> None:
    """Give each node of the replica its vLLM process."""
    for rank, host in enumerate(replica.nodes):
        instance = _node_process(state, replica, rank, host)
        state.hosts[host].vllm.append(instance)


def _node_process(state: PlacementState, replica: Replica, rank: int, host: str) -> VllmInstance:
    """The replica's process on one node: its GPUs, unit, port and flags; its ports claimed."""
    host_state = state.hosts[host]
    gpus = host_state.free_gpus[: replica.per_node]
    del host_state.free_gpus[: replica.per_node]
    local = sum(v.serve == replica.name for v in host_state.vllm)
    port = replica.serve.engine_port + local
    unit = f"vllm-{replica.name}-{local}" if replica.shared else f"vllm-{replica.name}"
    role: Role = "server"
    if rank > 0:
        role = "ray-worker" if replica.serve.distributed_backend == "ray" else "worker"
    bind = state.bind_address(host)
    weights = locate(state.sources.weights, replica.plan.checkpoint, replica.serve.revision)
    flags = planner.vllm_flags(
        replica.plan,
        served_names=replica.served_names,
        host=bind,
        port=port,
        revision=weights.revision,
        max_num_seqs=replica.serve.max_num_seqs,
        multinode=_multinode(state, replica, rank),
        backend=replica.serve.distributed_backend,
    )
    flags["model"] = weights.model_arg
    if role == "server":
        field_name = f"serve[{replica.index}].port"
        state.claim_port(host, port, unit, field_name, engine="vllm")
    _claim_cluster_ports(state, replica, rank, host, unit)
    return VllmInstance(
        serve=replica.name,
        unit=unit,
        role=role,
        replica=replica.number,
        node_rank=rank,
        nnodes=len(replica.nodes),
        head=replica.head,
        head_address=_head_address(state, replica),
        master_port=VLLM_MASTER_PORT if replica.multinode else None,
        gpu_indices=gpus,
        bind_address=bind,
        port=port,
        checkpoint=replica.plan.checkpoint,
        revision=replica.serve.revision,
        weights_gib=replica.plan.weights_gib,
        ready_timeout_s=replica.ready_timeout_s,
        served_names=replica.served_names,
        config=flags,
        env=vllm_env(state, host, gpus, replica.ready_timeout_s, replica.multinode),
        secret_env=_secret_env(state),
        plan=replica.plan,
    )


def _head_address(state: PlacementState, replica: Replica) -> str | None:
    return state.hosts[replica.head].cluster_address if replica.multinode else None


def _multinode(state: PlacementState, replica: Replica, rank: int) -> planner.MultiNode | None:
    """Where the nodes of a multi-process (mp) replica meet: its head's master port."""
    if not replica.multinode or replica.serve.distributed_backend != "mp":
        return None
    head = _head_address(state, replica) or f"<{replica.head}>"
    return planner.MultiNode(len(replica.nodes), rank, head, VLLM_MASTER_PORT)


def _claim_cluster_ports(
    state: PlacementState, replica: Replica, rank: int, host: str, unit: str
) -> None:
    """Ports between the nodes of a replica: Ray's fixed ports and worker range on every node of
    a Ray replica, the master port on the head of an mp replica."""
    if not replica.multinode:
        return
    if replica.serve.distributed_backend == "ray":
        ray, field_name = f"{unit} (Ray)", f"serve[{replica.index}].distributed_backend"
        if rank == 0:
            state.claim_port(host, RAY_PORT, ray, field_name)
        for ray_port in RAY_FIXED_PORTS.values():
            state.claim_port(host, ray_port, ray, field_name)
        state.claim_port(host, RAY_WORKER_PORTS[0], ray, field_name, high=RAY_WORKER_PORTS[1])
    elif rank == 0:
        field_name = f"serve[{replica.index}].nodes_per_replica"
        state.claim_port(host, VLLM_MASTER_PORT, f"{unit} (cluster)", field_name)


def _secret_env(state: PlacementState) -> dict[str, SecretSource]:
    """Variables of the unit filled from secrets: the engine's API key. Not the HF token: the
    engine runs with HF_HUB_OFFLINE=1 ("no HTTP calls will be made to the Hugging Face Hub",
    huggingface.co/docs/huggingface_hub/package_reference/environment_variables#hfhuboffline)
    on weights servekit downloaded before (the token reaches only the downloader, on stdin)."""
    secrets = {}
    if (key := secret_source(state.fleet.engine_api_key)) is not None:
        secrets["VLLM_API_KEY"] = key
    return secrets


def vllm_env(
    state: PlacementState, host: str, gpus: list[int], ready: int, multinode: bool
) -> dict[str, str]:
    """The non-secret environment of a vLLM unit (paths of the host's vLLM layout)."""
    env = {
        "HOME": LAYOUT.home,
        "HF_HOME": LAYOUT.hf_home,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": LAYOUT.vllm_cache,
        "TRITON_CACHE_DIR": LAYOUT.triton_cache,
        "VLLM_ENGINE_READY_TIMEOUT_S": str(ready),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    gpu = state.gpu_of(host)
    if gpu is not None and len(gpus) < gpu.count:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    if multinode and state.hosts[host].cluster_address:
        env["VLLM_HOST_IP"] = str(state.hosts[host].cluster_address)
    return env
