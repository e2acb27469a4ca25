"""The firewall plan of a host: which ports servekit's firewall protects (by service) and which
addresses it admits, host names resolved now (plan time, never at boot), so that `servekit plan`
shows it and `servekit.firewall` only writes it as nftables rules."""

from __future__ import annotations

import ipaddress

from servekit.errors import Problem
from servekit.hostplan import FirewallPlan, OllamaHost, VllmInstance, uses_ray
from servekit.placement.state import ANY, HOST_NAME, LOOPBACK, PlacementState, is_ip
from servekit.spec import (
    DCGM_EXPORTER_PORT,
    NODE_EXPORTER_PORT,
    RAY_FIXED_PORTS,
    RAY_PORT,
    RAY_WORKER_PORTS,
)


def ip_addresses(
    state: PlacementState, value: str, field_name: str, names: dict[str, list[str]]
) -> list[str]:
    """The IP addresses the firewall admits for `value`: an IP literal, or a host name
    resolved now (plan time, never at boot), both families. Anything else is a problem."""
    if is_ip(value):
        return [str(ipaddress.ip_address(value))]
    if not HOST_NAME.match(value):
        state.problems.append(
            Problem(
                field_name,
                f"{value!r} is neither an IP address nor a host name",
                "give one IPv4 or IPv6 address or one host name (no port, prefix, list or space)",
            )
        )
        return []
    if value not in state.resolved:
        state.resolved[value] = _resolve(state, value, field_name)
    if state.resolved[value]:
        names[value] = state.resolved[value]
    return state.resolved[value]


def _resolve(state: PlacementState, name: str, field_name: str) -> list[str]:
    """A host name's addresses from the resolver, or a problem when it has none."""
    try:
        found = state.resolve_name(name)
        reason = "no address"
    except (OSError, UnicodeError) as error:
        found, reason = [], str(error) or type(error).__name__
    found = [a for a in found if is_ip(a)]
    if not found:
        state.problems.append(
            Problem(
                field_name,
                f"host name {name!r} does not resolve ({reason}); the firewall admits "
                "addresses, resolved when the fleet is planned",
                "fix the name (or its DNS record), or give its IP address",
            )
        )
    return found


def exposed_ollama_port(ollama: OllamaHost | None) -> int | None:
    """The port of an Ollama that listens beyond loopback, else None."""
    if ollama is None:
        return None
    address, _, port = ollama.listen.removeprefix("http://").rpartition(":")
    if address.strip("[]") in ("localhost", LOOPBACK, "::1"):
        return None
    return int(port)


def admitted_hosts(state: PlacementState, host: str) -> list[str]:
    """The hosts admitted to this host's protected ports: the gateway and monitoring hosts and
    the other nodes of its multi-node replicas."""
    refs = [ref for ref in (state.gateway_host(), state.monitoring_host()) if ref and ref != host]
    for instance in state.hosts[host].vllm:
        if instance.nnodes > 1:
            for other, other_state in state.hosts.items():
                same_replica = any(
                    v.serve == instance.serve and v.replica == instance.replica
                    for v in other_state.vllm
                )
                if other != host and same_replica:
                    refs.append(other)
    return list(dict.fromkeys(refs))


def _by_family(addresses: set[str]) -> list[str]:
    return sorted(
        addresses, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a))
    )


def cluster_ports(instance: VllmInstance) -> set[str]:
    """Ports between the nodes of a multi-node replica: Ray's, or vLLM's master port."""
    if instance.nnodes <= 1:
        return set()
    if uses_ray(instance):
        ray = {str(RAY_PORT), *(str(p) for p in RAY_FIXED_PORTS.values())}
        return ray | {f"{RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]}"}
    return {str(instance.master_port)} if instance.master_port else set()


def exporter_ports(state: PlacementState, host: str) -> list[int]:
    """Exporter ports the monitoring host (only it) reaches on this host: the node exporter on
    every Linux host but the monitoring host itself (loopback there), DCGM's on GPU hosts with
    `GpuSetup(dcgm=True)`. Empty without monitoring."""
    monitoring = state.monitoring_host()
    if monitoring is None or monitoring == host:
        return []
    has_gpus = bool(state.hosts[host].free_gpus or state.hosts[host].vllm)
    dcgm = [DCGM_EXPORTER_PORT] if state.fleet.gpu_setup.dcgm and has_gpus else []
    return [NODE_EXPORTER_PORT, *dcgm]


def monitoring_admitted(state: PlacementState, host: str, names: dict[str, list[str]]) -> set[str]:
    """The monitoring host's addresses, admitted to this host's exporter ports."""
    monitoring = state.monitoring_host()
    if monitoring is None or monitoring == host:
        return set()
    address = state.hosts[monitoring].cluster_address
    if not address:
        return set()
    return set(ip_addresses(state, address, state.address_field(monitoring), names))


def firewall_plan(
    state: PlacementState, host: str, ollama: OllamaHost | None
) -> FirewallPlan | None:
    """What servekit's firewall on this host protects and admits; None where it writes none
    (not Linux, or neither vLLM nor an Ollama listening beyond loopback).

    An engine bound to all interfaces has no gateway in front: its clients come from anywhere
    and its API key guards `/v1`, so its port stays open (and `/metrics`, `/health` with it: put
    a gateway in front to close them). Otherwise the engine port (API, `/metrics`, `/health`)
    admits only the gateway and monitoring hosts. Cluster ports (vLLM's master port, Ray's
    ports) admit only the other nodes of the replica (and those hosts). An exposed Ollama's port
    admits them and the declared `OllamaSettings.clients`. Exporter ports (node, DCGM) admit
    only the monitoring host: with monitoring, every Linux host but that one has a firewall.
    """
    ollama_port = exposed_ollama_port(ollama)
    vllm = state.hosts[host].vllm
    exporters = exporter_ports(state, host)
    if state.fleet.machine_of(host).os != "linux" or not (vllm or ollama_port or exporters):
        return None
    names: dict[str, list[str]] = {}
    admitted: set[str] = set()
    engines = bool(vllm or ollama_port)  # else only exporters: the monitoring host alone
    for ref in admitted_hosts(state, host) if engines else []:
        address = state.hosts[ref].cluster_address
        if address:
            admitted.update(ip_addresses(state, address, state.address_field(ref), names))
    clients: set[str] = set()
    if ollama_port and state.fleet.ollama.expose:  # else only the gateway reaches it
        for index, client in enumerate(state.fleet.ollama.clients):
            clients.update(ip_addresses(state, client, f"ollama.clients[{index}]", names))
    servers = [v for v in vllm if v.role == "server"]
    cluster = set().union(*(cluster_ports(v) for v in vllm))
    return FirewallPlan(
        engine_ports=sorted({v.port for v in servers if v.bind_address != ANY}),
        cluster_ports=sorted(cluster, key=lambda p: int(p.split("-")[0])),
        open_ports=sorted({v.port for v in servers if v.bind_address == ANY}),
        ollama_ports=[ollama_port] if ollama_port else [],
        exporter_ports=exporters,
        monitoring=_by_family(monitoring_admitted(state, host, names)) if exporters else [],
        admitted=_by_family(admitted),
        clients=_by_family(clients - admitted),
        names=names,
    )
