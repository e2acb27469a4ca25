"""What the planner decides for each host: the data a pyinfra inventory hands to the deploys.

Every host of an inventory carries one `HostPlan`, dumped to JSON under the host-data key
`servekit` (readable with `pyinfra INVENTORY debug-inventory`); deploys load it back with
`HostPlan.from_host_data(host.data)`. This is the one contract between planning and deploying.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from servekit.planner import ModelPlan
from servekit.spec.serving import Routing

HOST_DATA_KEY = "servekit"


def ip_literal(value: str) -> str:
    """One IPv4 or IPv6 address (no name, prefix, port or list), in its normal written form:
    what the firewall may put in its address sets."""
    return str(ipaddress.ip_address(value))


IpLiteral = Annotated[str, AfterValidator(ip_literal)]


class SecretRefLike(Protocol):
    @property
    def file(self) -> Path | None: ...
    @property
    def env(self) -> str | None: ...


class Plain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretSource(Plain):
    """A secret by reference (a file or env variable on the control machine), never its value."""

    file: str | None = None
    env: str | None = None

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"env {self.env}"

    @classmethod
    def of(cls, ref: SecretRefLike) -> SecretSource:
        return cls(file=str(ref.file) if ref.file else None, env=ref.env)


class HfWeights(Plain):
    """Weights from the Hugging Face Hub (or a mirror of it); a token for gated models."""

    kind: Literal["huggingface"] = "huggingface"
    endpoint: str = "https://huggingface.co"
    token: SecretSource | None = None


class S3Weights(Plain):
    """Weights copied from `s3://BUCKET/PREFIX/<checkpoint>/`."""

    kind: Literal["s3"] = "s3"
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    credentials: SecretSource | None = None


class LocalWeights(Plain):
    """Weights read in place from `<path>/<checkpoint>` on every host."""

    kind: Literal["local"] = "local"
    path: str


WeightsPlan = Annotated[HfWeights | S3Weights | LocalWeights, Field(discriminator="kind")]


class SourcesPlan(Plain):
    """Where a host downloads from (the fleet's `Sources`, checked when the inventory loaded)."""

    python_index: str = "https://pypi.org/simple"
    torch_index: str = "https://download.pytorch.org/whl"
    vllm_wheels: str = "https://wheels.vllm.ai"
    nvidia_apt: str = "https://developer.download.nvidia.com/compute/cuda/repos"
    ollama_releases: str = "https://github.com/ollama/ollama/releases/download"
    weights: WeightsPlan = Field(default_factory=HfWeights)
    mirror_credentials: SecretSource | None = None

    def urls(self) -> dict[str, str]:
        """The package and release mirrors by field name (the weights source aside)."""
        return {
            "python_index": self.python_index,
            "torch_index": self.torch_index,
            "vllm_wheels": self.vllm_wheels,
            "nvidia_apt": self.nvidia_apt,
            "ollama_releases": self.ollama_releases,
        }


class VersionsPlan(Plain):
    """The pinned versions the host gets (the fleet's `Versions`)."""

    vllm: str
    ollama: str
    driver_branch: int
    driver_branch_pinned: bool = Field(
        False,
        description="the fleet chose driver_branch; otherwise a host's newer supported branch is "
        "adopted rather than downgraded to the default",
    )


class GpuSetupPlan(Plain):
    """Options of `deploys/gpu.py` beyond the driver branch (the fleet's `GpuSetup`)."""

    cuda_toolkit: str | None = None
    dcgm: bool = False
    reboot: bool = True
    reboot_batch: int = 1


class VllmInstance(Plain):
    """One vLLM process (one replica's share of one node) and its systemd unit."""

    serve: str
    unit: str
    role: Literal["server", "worker", "ray-worker"]
    replica: int
    node_rank: int
    nnodes: int
    head: str
    head_address: str | None
    master_port: int | None
    gpu_indices: list[int]
    bind_address: str
    port: int
    checkpoint: str
    revision: str | None
    weights_gib: float
    ready_timeout_s: int
    served_names: list[str]
    config: dict[str, Any] = Field(description="vLLM flags for `vllm serve --config`")
    env: dict[str, str] = Field(description="non-secret environment of the unit")
    secret_env: dict[str, SecretSource] = Field(description="variables filled from secrets")
    plan: ModelPlan


def vllm_instance_name(instance: VllmInstance) -> str:
    return instance.unit.removeprefix("vllm-")


def uses_ray(instance: VllmInstance) -> bool:
    """Whether this process belongs to a replica run by Ray (a head or a Ray worker node)."""
    return instance.role == "ray-worker" or (
        instance.config.get("distributed-executor-backend") == "ray"
    )


def ray_unit(instance: VllmInstance) -> str:
    """The Ray node unit beside a Ray-backed vLLM instance (`vllm-NAME` -> `ray-NAME`)."""
    return f"ray-{vllm_instance_name(instance)}"


class OllamaHost(Plain):
    """Ollama on one host: version, listen address, settings, and the models it must hold."""

    version: str
    listen: str
    env: dict[str, str]
    models: list[str]
    prune: bool
    plans: list[ModelPlan]
    wave: int = 0
    """When this host may restart Ollama: with a gateway in front, Ollama hosts restart one at a
    time (drained at the gateway), in fleet order."""
    waves: int = 0
    """The fleet's Ollama hosts when a gateway is in front; 0: restart right away."""


class Route(Plain):
    """A model name the gateway answers to, and the engine endpoints behind it."""

    model: str
    upstreams: list[str]
    engine: str
    routing: Routing = "least-outstanding"


class GatewayMember(Plain):
    """One replica's endpoint as the gateway reaches it, and which replica it is: rollouts
    drain it at the gateway before they restart it."""

    serve: str
    replica: int
    host: str
    upstream: str
    engine: str = "vllm"


class GatewayHost(Plain):
    port: int
    routes: list[Route]
    api_keys: SecretSource
    engine_api_key: SecretSource | None
    members: list[GatewayMember] = []
    drain_timeout: int = 120
    ollama_hosts: list[str] = []
    """The fleet's Ollama hosts in restart order (`OllamaHost.wave` indexes it)."""
    metrics_clients: list[str] = []
    """The monitoring host's addresses: it may read `/metrics` (a gateway-only host has no
    servekit firewall whose admitted addresses would say so)."""

    @property
    def waves(self) -> int:
        """How many rollout waves the fleet's vLLM deploy runs (`HostWork.waves` of the host
        with the most replicas): the gateway takes part in every one."""
        return max((m.replica for m in self.members), default=0) + 2


class ScrapeTarget(Plain):
    """One endpoint Prometheus scrapes, with the labels its series get (`fleet`, `host`,
    `role`; engines also `model`, `replica`, `unit`; GPU hosts `gpus` and `nvswitch`)."""

    address: str
    labels: dict[str, str]


class ScrapeJob(Plain):
    job: str
    targets: list[ScrapeTarget]
    metrics_path: str = "/metrics"
    probe_module: str | None = Field(
        None, description="probed through the blackbox exporter with this module (targets: URLs)"
    )


class GrafanaPlan(Plain):
    """Grafana beside Prometheus (the fleet's `Monitoring.grafana`): its package source, port
    and admin password, by reference."""

    apt_url: str
    suite: str
    component: str
    signing_key: str = Field(description="the repository's key file on the control machine")
    package: str
    port: int
    admin_password: SecretSource


class MonitoringHost(Plain):
    port: int
    scrape_interval: str
    retention: str
    jobs: list[ScrapeJob]
    alert_webhook: SecretSource | None = None
    ttft_p95_seconds: float = 5.0
    waiting_requests: int = 32
    ready_minutes: int = Field(15, description="the longest engine load bound, in minutes")
    grafana: GrafanaPlan | None = None


PortSpan = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,5}(-[0-9]{1,5})?$")]
"""A port or an inclusive range of ports, as nftables writes it (`8000`, `10002-19999`)."""


class FirewallPlan(Plain):
    """servekit's firewall on one host (Linux, with vLLM processes or an Ollama listening beyond
    loopback): the TCP ports it protects by service and the addresses it admits to them.

    Loopback is always admitted; the host's SSH port (`HostPlan.ssh_port`) is never matched. Host
    names were resolved when the fleet was planned: `names` keeps them for `servekit plan`.
    """

    engine_ports: list[int] = Field(
        default_factory=list, description="engine API, /metrics, /health: admitted addresses only"
    )
    cluster_ports: list[PortSpan] = Field(
        default_factory=list, description="between the nodes of a replica (vLLM master, Ray)"
    )
    open_ports: list[int] = Field(
        default_factory=list, description="engines without a gateway: every client, API key only"
    )
    ollama_ports: list[int] = Field(
        default_factory=list, description="an exposed Ollama: admitted addresses and clients"
    )
    exporter_ports: list[int] = Field(
        default_factory=list, description="node and DCGM exporters: the monitoring host only"
    )
    monitoring: list[IpLiteral] = Field(
        default_factory=list, description="the monitoring host's addresses (exporter ports)"
    )
    admitted: list[IpLiteral] = Field(
        default_factory=list, description="addresses admitted to engine, metrics and cluster ports"
    )
    clients: list[IpLiteral] = Field(
        default_factory=list, description="addresses admitted to an exposed Ollama, besides those"
    )
    names: dict[str, list[IpLiteral]] = Field(
        default_factory=dict, description="host names behind those addresses, resolved at plan time"
    )


class ExportersPlan(Plain):
    """The exporters Prometheus scrapes on a Linux host of a fleet with monitoring: Debian's node
    exporter, and NVIDIA's DCGM exporter where `GpuSetup(dcgm=True)` puts one, both listening
    where the monitoring host reaches this host (loopback on the monitoring host itself)."""

    listen_address: str = Field(description="an IP literal, or 0.0.0.0 behind the firewall")
    node_port: int
    dcgm_port: int | None = Field(None, description="None: no DCGM exporter on this host")


class HostPlan(Plain):
    """Everything servekit decided for one host."""

    fleet: str
    name: str
    roles: list[str]
    connection: Literal["ssh", "local"]
    address: str | None = Field(description="where SSH reaches it; None until cloud apply")
    cluster_address: str | None
    os: Literal["linux", "macos"]
    sudo: bool
    gpu_model: str | None
    gpu_count: int
    nvswitch_expected: bool
    cloud_group: str | None = None
    price_usd_hour: float | None = Field(None, description="on-demand list price (cloud hosts)")
    vllm: list[VllmInstance] = []
    ollama: OllamaHost | None = None
    gateway: GatewayHost | None = None
    monitoring: MonitoringHost | None = None
    exporters: ExportersPlan | None = Field(None, description="None: no monitoring, or not Linux")
    ssh_port: int = Field(22, ge=1, le=65535, description="the port the firewall never matches")
    firewall: FirewallPlan | None = Field(None, description="None: servekit writes no firewall")
    versions: VersionsPlan
    sources: SourcesPlan
    gpu_setup: GpuSetupPlan

    @property
    def firewall_allow(self) -> list[str]:
        """Addresses admitted to the engine, metrics and cluster ports (besides loopback)."""
        return list(self.firewall.admitted) if self.firewall else []

    @property
    def ollama_clients(self) -> list[str]:
        """Addresses admitted to an exposed Ollama, besides the admitted ones."""
        return list(self.firewall.clients) if self.firewall else []

    @property
    def firewall_names(self) -> dict[str, list[str]]:
        """Host names behind the admitted addresses, resolved at plan time."""
        return dict(self.firewall.names) if self.firewall else {}

    def to_host_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_host_data(cls, data: Any) -> HostPlan:
        """Load from pyinfra host data (`host.data`), or from the dumped dict itself."""
        raw = data.get(HOST_DATA_KEY) if hasattr(data, "get") else None
        return cls.model_validate(raw if raw is not None else data)
