"""From a declared fleet to a plan per host: which GPUs each replica takes, ports, ranks, routes.

`plan_fleet` is pure apart from the model resolver it is given (the default looks models up in
the catalog, then in a Hugging Face config.json). Every problem found is collected and raised as
one FleetError naming the fields and the fixes.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from servekit import catalog, planner
from servekit.catalog import ModelInfo
from servekit.catalog.hf_config import resolve_model
from servekit.errors import FleetError, Problem
from servekit.hostplan import (
    VLLM_HOME,
    GatewayHost,
    GpuSetupPlan,
    HostPlan,
    MonitoringHost,
    OllamaHost,
    Route,
    ScrapeJob,
    SecretSource,
    SourcesPlan,
    VersionsPlan,
    VllmInstance,
)
from servekit.spec import (
    DCGM_EXPORTER_PORT,
    NODE_EXPORTER_PORT,
    OLLAMA_PORT,
    RAY_FIXED_PORTS,
    RAY_PORT,
    RAY_WORKER_PORTS,
    VLLM_MASTER_PORT,
    VLLM_PORT,
    AwsNodeGroup,
    Fleet,
    Gpu,
    LocalHost,
    SecretRef,
    Serve,
    SshHost,
)
from servekit.weights import locate

Resolver = Callable[[str, Fleet], ModelInfo]
NameResolver = Callable[[str], list[str]]
"""A host name to its IPv4 and IPv6 addresses (raises OSError when it does not resolve)."""
HOST_NAME = re.compile(
    r"^(?=.{1,253}\.?$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$",
    re.IGNORECASE,
)
"""An RFC 1123 host name (ASCII letters, digits, hyphens; labels of at most 63 characters)."""
LOOPBACK = "127.0.0.1"
ANY = "0.0.0.0"


@dataclass(frozen=True)
class NodeAddress:
    """Where a cloud node is reached: public (SSH from here) and private (inside the cluster)."""

    public: str | None
    private: str | None
    instance_type: str | None = None


class ServeSummary(BaseModel):
    """One served model across the fleet: its plan and where its replicas run."""

    model_config = ConfigDict(frozen=True)

    name: str
    engine: str
    plan: planner.ModelPlan
    replicas: list[list[str]]
    port: int
    served_names: list[str]
    cost_usd_hour: float | None


class FleetPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    fleet: str
    serves: list[ServeSummary]
    hosts: dict[str, HostPlan]
    cost_usd_hour: float | None


def resolve_host_name(name: str) -> list[str]:
    """Every IPv4 and IPv6 address the control machine's resolver gives for `name`."""
    found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return sorted({str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in found})


def default_resolver(model: str, fleet: Fleet) -> ModelInfo:
    weights = fleet.sources.weights
    endpoint = getattr(weights, "endpoint", "https://huggingface.co")
    return resolve_model(model, endpoint=endpoint)


@dataclass
class _Host:
    name: str
    address: str | None
    cluster_address: str | None
    free_gpus: list[int]
    vllm: list[VllmInstance] = field(default_factory=list)
    ollama_models: list[str] = field(default_factory=list)
    ollama_plans: list[planner.ModelPlan] = field(default_factory=list)
    ollama_port: int | None = None
    ports: list[_Claim] = field(default_factory=list)


@dataclass(frozen=True)
class _Claim:
    """Ports [low, high] one service holds on a host, and the field that declared them."""

    low: int
    high: int
    what: str
    field: str

    def overlaps(self, other: _Claim) -> bool:
        return self.low <= other.high and other.low <= self.high

    def describe(self) -> str:
        span = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"{self.what} ({span}, {self.field})"


# Engines run as unprivileged users (vLLM as `vllm`, Ollama as `ollama`: servekit/deploys) and
# cannot bind a port below 1024 without a capability servekit never grants.
UNPRIVILEGED_USER = {"vllm": "vllm", "ollama": "ollama"}


def _secret(ref: SecretRef | None) -> SecretSource | None:
    return None if ref is None else SecretSource.of(ref)


def _sudo(machine: SshHost | LocalHost | AwsNodeGroup) -> bool:
    """Whether system changes on this host need sudo (never for Homebrew on macOS)."""
    if machine.os == "macos":
        return False
    if isinstance(machine, LocalHost):
        return machine.sudo if machine.sudo is not None else os.geteuid() != 0
    if isinstance(machine, SshHost):
        return machine.sudo and machine.ssh_user not in (None, "root")
    return True


def _is_ip(value: str | None) -> bool:
    try:
        ipaddress.ip_address(value or "")
    except ValueError:
        return False
    return True


class _Planner:
    def __init__(
        self,
        fleet: Fleet,
        addresses: dict[str, NodeAddress],
        resolve: Resolver,
        resolve_name: NameResolver = resolve_host_name,
    ) -> None:
        self.fleet = fleet
        self.resolve = resolve
        self.resolve_name = resolve_name
        self.resolved: dict[str, list[str]] = {}
        self.problems: list[Problem] = []
        self.hosts: dict[str, _Host] = {}
        self.launched_types = {
            name: known.instance_type for name, known in addresses.items() if known.instance_type
        }
        for name in fleet.host_names():
            machine = fleet.machine_of(name)
            gpu = self.gpu_of(name)
            count = gpu.count if gpu and not gpu.info.apple else 0
            if isinstance(machine, AwsNodeGroup):
                known = addresses.get(name)
                address = known.public or known.private if known else None
                cluster = known.private if known else None
            elif isinstance(machine, LocalHost):
                address, cluster = None, LOOPBACK
            else:
                address = machine.address
                cluster = str(machine.cluster_address) if machine.cluster_address else address
            self.hosts[name] = _Host(name, address, cluster, list(range(count)))
            self.hosts[name].ports.append(self.ssh_claim(name))
            if fleet.monitoring is not None:  # exporters run on every host Prometheus scrapes
                self.hosts[name].ports.append(
                    _Claim(NODE_EXPORTER_PORT, NODE_EXPORTER_PORT, "node exporter", "monitoring")
                )
                if fleet.gpu_setup.dcgm and count:
                    self.hosts[name].ports.append(
                        _Claim(
                            DCGM_EXPORTER_PORT,
                            DCGM_EXPORTER_PORT,
                            "DCGM exporter",
                            "gpu_setup.dcgm",
                        )
                    )
        self.summaries: list[ServeSummary] = []

    def instance_type_of(self, host: str) -> str | None:
        """The instance type a cloud node really runs (a fallback type once launched)."""
        machine = self.fleet.machine_of(host)
        if not isinstance(machine, AwsNodeGroup):
            return None
        return self.launched_types.get(host, machine.instance_type)

    def gpu_of(self, host: str) -> Gpu | None:
        """The host's GPUs: declared, or those of the instance type it was launched as."""
        itype = self.instance_type_of(host)
        if itype is None:
            return self.fleet.gpu_of(host)
        launched = catalog.instance_type(itype)
        return Gpu(model=launched.gpu, count=launched.gpus)

    def ssh_claim(self, host: str) -> _Claim:
        """The host's SSH port: no service may take it (the firewall never closes it)."""
        machine = self.fleet.machine_of(host)
        index = self.fleet.machines.index(machine)
        if isinstance(machine, SshHost):
            return _Claim(machine.ssh_port, machine.ssh_port, "SSH", f"machines[{index}].ssh_port")
        return _Claim(22, 22, "SSH", f"machines[{index}]")

    def claim_port(
        self,
        host: str,
        port: int,
        what: str,
        field_name: str,
        *,
        high: int | None = None,
        engine: str | None = None,
    ) -> None:
        """Take ports [port, high] on a host for a service, or say which service holds them.

        A service never shares a port or overlaps a range of another on the same host, never
        takes the SSH port, and an engine (unprivileged) never takes a port below 1024."""
        claim = _Claim(port, high if high is not None else port, what, field_name)
        if engine is not None and port < 1024:
            self.problems.append(
                Problem(
                    field_name,
                    f"port {port} is privileged (below 1024) and {engine} runs as the "
                    f"unprivileged user {UNPRIVILEGED_USER[engine]!r}",
                    "use a port from 1024 up (the default is "
                    f"{OLLAMA_PORT if engine == 'ollama' else VLLM_PORT}); put the gateway in "
                    "front for a well-known port",
                )
            )
        for held in self.hosts[host].ports:
            if held.what == what or not held.overlaps(claim):
                continue
            if held.what == "SSH":
                ssh_field = (
                    held.field
                    if isinstance(self.fleet.machine_of(host), SshHost)
                    else f"{held.field}.ssh_port"
                )
                ranged = claim.low != claim.high
                self.problems.append(
                    Problem(
                        held.field if ranged and held.field.endswith("ssh_port") else field_name,
                        f"{claim.describe()} on {host!r} would take its SSH port {held.low}; "
                        "the firewall keeps SSH open, so the service could never be reached "
                        "and the operator could be locked out",
                        (
                            f"move SSH out of {claim.low}-{claim.high} ({ssh_field}), or use "
                            "distributed_backend='mp'"
                        )
                        if ranged
                        else f"give {field_name} another port than {held.low}",
                    )
                )
                continue
            self.problems.append(
                Problem(
                    field_name,
                    f"port {port if claim.low == claim.high else claim.describe()} on {host!r} "
                    f"is also used by {held.describe()}",
                    "give each service on a host its own port",
                )
            )
        self.hosts[host].ports.append(claim)

    def gateway_host(self) -> str | None:
        gateway = self.fleet.gateway
        if gateway is None:
            return None
        machine = self.fleet.machine_of(gateway.host)
        return machine.node_names()[0] if isinstance(machine, AwsNodeGroup) else gateway.host

    def bind_address(self, host: str) -> str:
        """Engines listen where only their clients can reach them (see the security rules)."""
        gateway = self.gateway_host()
        if gateway == host:
            return LOOPBACK
        if gateway is not None and _is_ip(self.hosts[host].cluster_address):
            return str(self.hosts[host].cluster_address)
        if isinstance(self.fleet.machine_of(host), LocalHost):
            return LOOPBACK
        return ANY

    def reach(self, target: str, source: str | None) -> str:
        """The address `source` uses to reach `target`."""
        if source == target:
            return LOOPBACK
        return self.hosts[target].cluster_address or f"<{target}>"

    # vLLM -----------------------------------------------------------------------------------

    def plan_vllm(self, index: int, serve: Serve) -> None:
        fleet, field_name = self.fleet, f"serve[{index}]"
        name = fleet.serve_name(index)
        hosts = fleet.hosts_of(serve)
        try:
            model = self.resolve(serve.model, fleet)
        except catalog.CatalogError as error:
            self.problems.append(
                Problem(
                    f"{field_name}.model",
                    str(error),
                    "use a model from servekit/catalog/models.toml or a Hugging Face id whose "
                    "config.json is readable (local path, HF cache, or the Hub)",
                )
            )
            return
        gpus = {(g.info.name, g.count) for h in hosts if (g := self.gpu_of(h))}
        if len(gpus) != 1:
            self.problems.append(
                Problem(
                    f"{field_name}.hosts",
                    f"hosts mix GPU models or counts: {sorted(gpus)}",
                    "serve one model on identical machines (split it into two Serve entries)",
                )
            )
            return
        ((gpu_name, per_node),) = gpus
        gpu = catalog.gpu(gpu_name)
        per_replica = serve.gpus_per_replica or min(len(self.hosts[h].free_gpus) for h in hosts)
        if per_replica == 0:
            self.problems.append(
                Problem(
                    f"{field_name}.hosts",
                    "earlier entries took every GPU of its hosts",
                    "set gpus_per_replica on the entries that share a node",
                )
            )
            return
        if per_replica > per_node:
            self.problems.append(
                Problem(
                    f"{field_name}.gpus_per_replica",
                    f"{per_replica} GPUs per replica, but a node has {per_node}",
                    f"use gpus_per_replica<={per_node}, or nodes_per_replica for more",
                )
            )
            return
        nodes = serve.nodes_per_replica
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
            plan = planner.plan_vllm(model, gpu, per_replica, nodes, request)
        except planner.PlanRefused as refused:
            self.problems.append(
                Problem(
                    f"{field_name}.{refused.field}",
                    refused.reason,
                    ", or ".join(refused.alternatives) or "use larger GPUs",
                )
            )
            return
        served_names = self.served_names(serve, model, plan)
        replicas = self.place(index, serve, hosts, per_replica, nodes)
        if not replicas:
            return
        on_host = Counter(h for r in replicas for h in r)
        for replica, nodes_of_replica in enumerate(replicas):
            shared = any(on_host[h] > 1 for h in nodes_of_replica)
            self.add_replica(
                serve, name, replica, nodes_of_replica, per_replica, plan, served_names, shared
            )
        cost = self.cost([h for r in replicas for h in r])
        self.summaries.append(
            ServeSummary(
                name=name,
                engine="vllm",
                plan=plan,
                replicas=replicas,
                port=serve.engine_port,
                served_names=served_names,
                cost_usd_hour=cost,
            )
        )

    def served_names(self, serve: Serve, model: ModelInfo, plan: planner.ModelPlan) -> list[str]:
        names = [model.hf_id]
        tag = model.ollama_tag
        if tag and catalog.normalise_ollama_tag(serve.model) == catalog.normalise_ollama_tag(tag):
            names.insert(0, tag)
        names += serve.served_names
        if plan.checkpoint != model.hf_id:
            names.append(plan.checkpoint)
        return list(dict.fromkeys(names))

    def place(
        self, index: int, serve: Serve, hosts: list[str], per_replica: int, nodes: int
    ) -> list[list[str]]:
        """Hosts of each replica: groups of `nodes` hosts in declaration order, as many replicas
        per group as their free GPUs hold (up to `replicas` when declared)."""
        free = {h: len(self.hosts[h].free_gpus) for h in hosts}
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
            self.problems.append(
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

    def add_replica(
        self,
        serve: Serve,
        name: str,
        replica: int,
        nodes: list[str],
        per_replica: int,
        plan: planner.ModelPlan,
        served_names: list[str],
        shared: bool,
    ) -> None:
        head = nodes[0]
        head_address = self.hosts[head].cluster_address if len(nodes) > 1 else None
        ready = min(3600, 600 + int(15 * plan.weights_gib)) * (3 if len(nodes) > 1 else 2) // 2
        index = self.fleet.serve.index(serve)
        for rank, host in enumerate(nodes):
            state = self.hosts[host]
            gpus = state.free_gpus[:per_replica]
            del state.free_gpus[:per_replica]
            local = sum(v.serve == name for v in state.vllm)
            port = serve.engine_port + local
            unit = f"vllm-{name}-{local}" if shared else f"vllm-{name}"
            role: Literal["server", "worker", "ray-worker"] = "server"
            if rank > 0:
                role = "ray-worker" if serve.distributed_backend == "ray" else "worker"
            multinode = None
            if len(nodes) > 1 and serve.distributed_backend == "mp":
                multinode = planner.MultiNode(
                    len(nodes), rank, head_address or f"<{head}>", VLLM_MASTER_PORT
                )
            bind = self.bind_address(host)
            weights = locate(
                SourcesPlan.model_validate(self.fleet.sources.model_dump(mode="json")).weights,
                plan.checkpoint,
                serve.revision,
            )
            flags = planner.vllm_flags(
                plan,
                served_names=served_names,
                host=bind,
                port=port,
                revision=weights.revision,
                max_num_seqs=serve.max_num_seqs,
                multinode=multinode,
                backend=serve.distributed_backend,
            )
            flags["model"] = weights.model_arg
            env = self.vllm_env(host, gpus, ready, len(nodes) > 1)
            secrets = {}
            if (key := _secret(self.fleet.engine_api_key)) is not None:
                secrets["VLLM_API_KEY"] = key
            if (token := _secret(getattr(self.fleet.sources.weights, "token", None))) is not None:
                secrets["HF_TOKEN"] = token
            if role == "server":
                self.claim_port(host, port, f"{unit}", f"serve[{index}].port", engine="vllm")
            cluster_field = f"serve[{index}].distributed_backend"
            if len(nodes) > 1 and serve.distributed_backend == "ray":
                # Every node of a Ray replica holds Ray's fixed ports and its worker range.
                ray = f"{unit} (Ray)"
                if rank == 0:
                    self.claim_port(host, RAY_PORT, ray, cluster_field)
                for ray_port in RAY_FIXED_PORTS.values():
                    self.claim_port(host, ray_port, ray, cluster_field)
                self.claim_port(
                    host, RAY_WORKER_PORTS[0], ray, cluster_field, high=RAY_WORKER_PORTS[1]
                )
            elif len(nodes) > 1 and rank == 0:
                self.claim_port(
                    host,
                    VLLM_MASTER_PORT,
                    f"{unit} (cluster)",
                    f"serve[{index}].nodes_per_replica",
                )
            state.vllm.append(
                VllmInstance(
                    serve=name,
                    unit=unit,
                    role=role,
                    replica=replica,
                    node_rank=rank,
                    nnodes=len(nodes),
                    head=head,
                    head_address=head_address,
                    master_port=VLLM_MASTER_PORT if len(nodes) > 1 else None,
                    gpu_indices=gpus,
                    bind_address=bind,
                    port=port,
                    checkpoint=plan.checkpoint,
                    revision=serve.revision,
                    weights_gib=plan.weights_gib,
                    ready_timeout_s=ready,
                    served_names=served_names,
                    config=flags,
                    env=env,
                    secret_env=secrets,
                    plan=plan,
                )
            )

    def vllm_env(self, host: str, gpus: list[int], ready: int, multinode: bool) -> dict[str, str]:
        env = {
            "HOME": VLLM_HOME,
            "HF_HOME": f"{VLLM_HOME}/huggingface",
            "HF_HUB_OFFLINE": "1",
            "VLLM_CACHE_ROOT": f"{VLLM_HOME}/cache/vllm",
            "TRITON_CACHE_DIR": f"{VLLM_HOME}/cache/triton",
            "VLLM_ENGINE_READY_TIMEOUT_S": str(ready),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        gpu = self.gpu_of(host)
        if gpu is not None and len(gpus) < gpu.count:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        if multinode and self.hosts[host].cluster_address:
            env["VLLM_HOST_IP"] = str(self.hosts[host].cluster_address)
        return env

    # Ollama ---------------------------------------------------------------------------------

    def plan_ollama(self, index: int, serve: Serve) -> None:
        fleet, settings = self.fleet, self.fleet.ollama
        name = fleet.serve_name(index)
        model = catalog.find_model(serve.model)
        tag = catalog.normalise_ollama_tag(
            model.ollama_tag if model and model.ollama_tag and "/" in serve.model else serve.model
        )
        plans = []
        hosts = fleet.hosts_of(serve)
        for host in hosts:
            gpu = self.gpu_of(host)
            plan = planner.plan_ollama(
                model,
                tag,
                gpu.info if gpu else None,
                gpu.count if gpu else 0,
                gpu.memory_gib if gpu else None,
                settings.context_length,
                settings.num_parallel,
                settings.kv_cache_type,
            )
            state = self.hosts[host]
            if state.ollama_port not in (None, serve.engine_port):
                self.problems.append(
                    Problem(
                        f"serve[{index}].port",
                        f"one Ollama server on {host!r} already listens on {state.ollama_port}",
                        "use the same port for every Ollama model of a host",
                    )
                )
            state.ollama_port = serve.engine_port
            self.claim_port(
                host, serve.engine_port, "ollama", f"serve[{index}].port", engine="ollama"
            )
            if tag not in state.ollama_models:
                state.ollama_models.append(tag)
                state.ollama_plans.append(plan)
            plans.append(plan)
        if plans:
            self.summaries.append(
                ServeSummary(
                    name=name,
                    engine="ollama",
                    plan=plans[0],
                    replicas=[[h] for h in hosts],
                    port=serve.engine_port,
                    served_names=[tag],
                    cost_usd_hour=self.cost(hosts),
                )
            )

    def ollama_host(self, host: str) -> OllamaHost | None:
        state = self.hosts[host]
        if not state.ollama_models:
            return None
        settings = self.fleet.ollama
        machine = self.fleet.machine_of(host)
        bind = self.bind_address(host) if settings.expose else LOOPBACK
        env = {
            "OLLAMA_HOST": f"{bind}:{state.ollama_port}",
            "OLLAMA_MODELS": settings.models_dir
            or ("~/.ollama/models" if machine.os == "macos" else "/var/lib/ollama/models"),
            "OLLAMA_KEEP_ALIVE": settings.keep_alive,
            "OLLAMA_NUM_PARALLEL": str(settings.num_parallel),
            "OLLAMA_MAX_LOADED_MODELS": str(settings.max_loaded_models),
            "OLLAMA_KV_CACHE_TYPE": settings.kv_cache_type,
            "OLLAMA_NO_CLOUD": "1",
        }
        if settings.flash_attention is not None:
            env["OLLAMA_FLASH_ATTENTION"] = "1" if settings.flash_attention else "0"
        if settings.context_length:
            env["OLLAMA_CONTEXT_LENGTH"] = str(settings.context_length)
        if settings.origins:
            env["OLLAMA_ORIGINS"] = ",".join(settings.origins)
        return OllamaHost(
            version=self.fleet.versions.ollama,
            listen=env["OLLAMA_HOST"],
            env=env,
            models=state.ollama_models,
            prune=settings.prune,
            plans=state.ollama_plans,
        )

    # Around the engines ---------------------------------------------------------------------

    def gateway(self, host: str) -> GatewayHost | None:
        gateway = self.fleet.gateway
        if gateway is None or host != self.gateway_host():
            return None
        self.claim_port(host, gateway.port, "gateway", "gateway.port")
        routes = []
        for summary in self.summaries:
            upstreams = []
            for nodes in summary.replicas:
                head = nodes[0]
                if summary.engine == "ollama":
                    upstreams.append(f"{self.reach(head, host)}:{summary.port}")
                else:
                    upstreams += [
                        f"{self.reach(head, host)}:{v.port}"
                        for v in self.hosts[head].vllm
                        if v.serve == summary.name and v.role == "server"
                    ]
            for model in summary.served_names:
                routes.append(
                    Route(model=model, upstreams=sorted(set(upstreams)), engine=summary.engine)
                )
        assert gateway.api_keys is not None
        return GatewayHost(
            port=gateway.port,
            routes=routes,
            api_keys=SecretSource.of(gateway.api_keys),
            engine_api_key=_secret(self.fleet.engine_api_key),
        )

    def monitoring(self, host: str) -> MonitoringHost | None:
        monitoring = self.fleet.monitoring
        if monitoring is None or host != self.fleet_host(monitoring.host):
            return None
        self.claim_port(host, monitoring.port, "prometheus", "monitoring.port")
        engines = sorted(
            {
                f"{self.reach(h, host)}:{v.port}"
                for h, s in self.hosts.items()
                for v in s.vllm
                if v.role == "server"
            }
        )
        nodes = sorted(f"{self.reach(h, host)}:{NODE_EXPORTER_PORT}" for h in self.hosts)
        jobs = [ScrapeJob(job="vllm", targets=engines), ScrapeJob(job="node", targets=nodes)]
        if self.fleet.gpu_setup.dcgm:
            gpu_hosts = [h for h in self.hosts if self.hosts[h].free_gpus or self.hosts[h].vllm]
            jobs.append(
                ScrapeJob(
                    job="dcgm",
                    targets=sorted(
                        f"{self.reach(h, host)}:{DCGM_EXPORTER_PORT}" for h in gpu_hosts
                    ),
                )
            )
        return MonitoringHost(
            port=monitoring.port,
            scrape_interval=monitoring.scrape_interval,
            retention=monitoring.retention,
            jobs=jobs,
        )

    def fleet_host(self, ref: str) -> str:
        machine = self.fleet.machine_of(ref)
        return machine.node_names()[0] if isinstance(machine, AwsNodeGroup) else ref

    def address_field(self, host: str) -> str:
        """The inventory field a host's cluster address comes from (for error messages)."""
        machine = self.fleet.machine_of(host)
        index = self.fleet.machines.index(machine)
        if isinstance(machine, SshHost) and machine.cluster_address is None:
            return f"machines[{index}].address"
        return f"machines[{index}].cluster_address"

    def ip_addresses(self, value: str, field_name: str, names: dict[str, list[str]]) -> list[str]:
        """The IP addresses the firewall admits for `value`: an IP literal, or a host name
        resolved now (plan time, never at boot), both families. Anything else is a problem."""
        if _is_ip(value):
            return [str(ipaddress.ip_address(value))]
        if not HOST_NAME.match(value):
            self.problems.append(
                Problem(
                    field_name,
                    f"{value!r} is neither an IP address nor a host name",
                    "give one IPv4 or IPv6 address or one host name (no port, prefix, list or "
                    "space)",
                )
            )
            return []
        if value not in self.resolved:
            try:
                found = self.resolve_name(value)
                reason = "no address"
            except (OSError, UnicodeError) as error:
                found, reason = [], str(error) or type(error).__name__
            found = [a for a in found if _is_ip(a)]
            self.resolved[value] = found
            if not found:
                self.problems.append(
                    Problem(
                        field_name,
                        f"host name {value!r} does not resolve ({reason}); the firewall admits "
                        "addresses, resolved when the fleet is planned",
                        "fix the name (or its DNS record), or give its IP address",
                    )
                )
        if self.resolved[value]:
            names[value] = self.resolved[value]
        return self.resolved[value]

    def firewall(
        self, host: str, ollama: OllamaHost | None
    ) -> tuple[list[str], list[str], dict[str, list[str]]]:
        """Who may reach this host's protected ports (besides itself): the gateway and
        monitoring hosts and the other nodes of its replicas; for an exposed Ollama also the
        declared clients. Host names resolved, with the names for `servekit plan` to show."""
        machine = self.fleet.machine_of(host)
        exposed = ollama is not None and not ollama.listen.startswith(f"{LOOPBACK}:")
        if machine.os != "linux" or not (self.hosts[host].vllm or exposed):
            return [], [], {}
        names: dict[str, list[str]] = {}
        refs: list[str] = []
        for ref in (
            self.gateway_host(),
            self.fleet_host(self.fleet.monitoring.host) if self.fleet.monitoring else None,
        ):
            if ref and ref != host:
                refs.append(ref)
        for instance in self.hosts[host].vllm:
            if instance.nnodes > 1:
                for other, state in self.hosts.items():
                    same_replica = any(
                        v.serve == instance.serve and v.replica == instance.replica
                        for v in state.vllm
                    )
                    if other != host and same_replica:
                        refs.append(other)
        allowed: set[str] = set()
        for ref in dict.fromkeys(refs):
            address = self.hosts[ref].cluster_address
            if address:
                allowed.update(self.ip_addresses(address, self.address_field(ref), names))
        clients: set[str] = set()
        if exposed:
            for index, client in enumerate(self.fleet.ollama.clients):
                clients.update(self.ip_addresses(client, f"ollama.clients[{index}]", names))
        key = lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a))  # noqa: E731
        return sorted(allowed, key=key), sorted(clients - allowed, key=key), names

    def cost(self, hosts: list[str]) -> float | None:
        total, any_cloud = 0.0, False
        for host in hosts:
            machine = self.fleet.machine_of(host)
            if isinstance(machine, AwsNodeGroup):
                any_cloud = True
                price = catalog.instance_type(str(self.instance_type_of(host))).price_usd_hour
                if price is None:
                    return None
                total += price
        return round(total, 2) if any_cloud else None

    def host_plan(self, name: str) -> HostPlan:
        fleet, state = self.fleet, self.hosts[name]
        machine = fleet.machine_of(name)
        gpu = self.gpu_of(name)
        nvidia = gpu is not None and not gpu.info.apple
        ollama = self.ollama_host(name)
        gateway = self.gateway(name)
        monitoring = self.monitoring(name)
        firewall_allow, ollama_clients, firewall_names = self.firewall(name, ollama)
        roles = [
            role
            for role, present in (
                ("gpu", nvidia),
                ("vllm", bool(state.vllm)),
                ("ollama", ollama is not None),
                ("gateway", gateway is not None),
                ("monitoring", monitoring is not None),
            )
            if present
        ]
        return HostPlan(
            fleet=fleet.name,
            name=name,
            roles=roles,
            connection="local" if isinstance(machine, LocalHost) else "ssh",
            address=state.address,
            cluster_address=state.cluster_address,
            os=machine.os,
            sudo=_sudo(machine),
            gpu_model=gpu.info.name if gpu else None,
            gpu_count=gpu.count if gpu else 0,
            nvswitch_expected=bool(nvidia and gpu and gpu.info.nvswitch and gpu.count == 8),
            cloud_group=machine.name if isinstance(machine, AwsNodeGroup) else None,
            price_usd_hour=self.cost([name]),
            vllm=state.vllm,
            ollama=ollama,
            gateway=gateway,
            monitoring=monitoring,
            ssh_port=machine.ssh_port if isinstance(machine, SshHost) else 22,
            firewall_allow=firewall_allow,
            ollama_clients=ollama_clients,
            firewall_names=firewall_names,
            versions=VersionsPlan.model_validate(fleet.versions.model_dump(mode="json")),
            sources=SourcesPlan.model_validate(fleet.sources.model_dump(mode="json")),
            gpu_setup=GpuSetupPlan.model_validate(fleet.gpu_setup.model_dump(mode="json")),
        )


def plan_fleet(
    fleet: Fleet,
    addresses: dict[str, NodeAddress] | None = None,
    resolve: Resolver = default_resolver,
    resolve_name: NameResolver = resolve_host_name,
) -> FleetPlan:
    """Plan every served model and every host of the fleet; FleetError lists all problems.

    `resolve_name` turns the host names the firewalls admit into addresses (default: the control
    machine's resolver)."""
    state = _Planner(fleet, addresses or {}, resolve, resolve_name)
    for index, serve in enumerate(fleet.serve):
        if serve.engine == "vllm":
            state.plan_vllm(index, serve)
        else:
            state.plan_ollama(index, serve)
    hosts = {name: state.host_plan(name) for name in fleet.host_names()}
    if state.problems:
        raise FleetError(state.problems, fleet=fleet.name)
    costs = [state.cost([h]) for h in hosts]
    cloud = [c for c in costs if c is not None]
    return FleetPlan(
        fleet=fleet.name,
        serves=state.summaries,
        hosts=hosts,
        cost_usd_hour=round(sum(cloud), 2) if cloud else None,
    )
