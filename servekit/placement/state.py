"""What placement works on while it plans a fleet: each host's free GPUs, the services placed on
it and the ports they hold, and the problems found so far; with the fleet-wide questions every
step asks (a host's GPUs, where its engines listen, how another host reaches it, its price)."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from servekit import catalog, planner
from servekit.catalog import ModelInfo
from servekit.catalog.hf_config import resolve_model
from servekit.errors import Problem
from servekit.hostplan import HostPlan, SecretSource, SourcesPlan, VllmInstance
from servekit.placement.ports import PortClaim, port_problems, service_claims
from servekit.spec import AwsNodeGroup, Fleet, Gpu, LocalHost, SecretRef, SshHost
from servekit.spec.serving import Routing

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
    routing: Routing = "least-outstanding"


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


def secret_source(ref: SecretRef | None) -> SecretSource | None:
    return None if ref is None else SecretSource.of(ref)


def is_ip(value: str | None) -> bool:
    try:
        ipaddress.ip_address(value or "")
    except ValueError:
        return False
    return True


@dataclass
class HostState:
    """One host while the fleet is planned: what is still free on it and what was placed."""

    name: str
    address: str | None
    cluster_address: str | None
    free_gpus: list[int]
    vllm: list[VllmInstance] = field(default_factory=list)
    ollama_models: list[str] = field(default_factory=list)
    ollama_plans: list[planner.ModelPlan] = field(default_factory=list)
    ollama_port: int | None = None
    ports: list[PortClaim] = field(default_factory=list)


class PlacementState:
    """The fleet being planned: its hosts, the summaries of served models, and the problems."""

    def __init__(
        self,
        fleet: Fleet,
        addresses: dict[str, NodeAddress],
        resolve: Resolver,
        resolve_name: NameResolver = resolve_host_name,
    ) -> None:
        self.fleet = fleet
        self.sources = SourcesPlan.model_validate(fleet.sources.model_dump(mode="json"))
        """The fleet's sources as every host plan carries them (typed once, read everywhere)."""
        self.resolve = resolve
        self.resolve_name = resolve_name
        self.resolved: dict[str, list[str]] = {}
        self.problems: list[Problem] = []
        self.hosts: dict[str, HostState] = {}
        self.summaries: list[ServeSummary] = []
        self.launched_types = {
            name: known.instance_type for name, known in addresses.items() if known.instance_type
        }
        for name in fleet.host_names():
            address, cluster = self._addresses(name, addresses)
            gpu = self.gpu_of(name)
            count = gpu.count if gpu and not gpu.info.apple else 0
            state = HostState(name, address, cluster, list(range(count)))
            state.ports += service_claims(fleet, name, has_gpus=bool(count))
            self.hosts[name] = state

    def _addresses(
        self, name: str, addresses: dict[str, NodeAddress]
    ) -> tuple[str | None, str | None]:
        """Where SSH reaches the host, and its address inside the cluster."""
        machine = self.fleet.machine_of(name)
        if isinstance(machine, AwsNodeGroup):
            known = addresses.get(name)
            if known is None:
                return None, None
            return known.public or known.private, known.private
        if isinstance(machine, LocalHost):
            return None, LOOPBACK
        address = machine.address
        return address, str(machine.cluster_address) if machine.cluster_address else address

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
        claim = PortClaim(port, high if high is not None else port, what, field_name)
        ssh_host = isinstance(self.fleet.machine_of(host), SshHost)
        self.problems += port_problems(
            host, claim, self.hosts[host].ports, engine=engine, ssh_host=ssh_host
        )
        self.hosts[host].ports.append(claim)

    def fleet_host(self, ref: str) -> str:
        """The host a machine reference names (a node group: its first node)."""
        machine = self.fleet.machine_of(ref)
        return machine.node_names()[0] if isinstance(machine, AwsNodeGroup) else ref

    def gateway_host(self) -> str | None:
        gateway = self.fleet.gateway
        return None if gateway is None else self.fleet_host(gateway.host)

    def monitoring_host(self) -> str | None:
        monitoring = self.fleet.monitoring
        return None if monitoring is None else self.fleet_host(monitoring.host)

    def bind_address(self, host: str) -> str:
        """Engines listen where only their clients can reach them (see the security rules)."""
        gateway = self.gateway_host()
        if gateway == host:
            return LOOPBACK
        if gateway is not None and is_ip(self.hosts[host].cluster_address):
            return str(self.hosts[host].cluster_address)
        if isinstance(self.fleet.machine_of(host), LocalHost):
            return LOOPBACK
        return ANY

    def reach(self, target: str, source: str | None) -> str:
        """The address `source` uses to reach `target`."""
        if source == target:
            return LOOPBACK
        return self.hosts[target].cluster_address or f"<{target}>"

    def address_field(self, host: str) -> str:
        """The inventory field a host's cluster address comes from (for error messages)."""
        machine = self.fleet.machine_of(host)
        index = self.fleet.machines.index(machine)
        if isinstance(machine, SshHost) and machine.cluster_address is None:
            return f"machines[{index}].address"
        return f"machines[{index}].cluster_address"

    def cost(self, hosts: list[str]) -> float | None:
        """The hourly list price of these hosts (None without cloud hosts or a known price)."""
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
