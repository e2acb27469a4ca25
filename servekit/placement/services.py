"""Placing what surrounds the engines: the gateway's routes to every replica, and the
Prometheus jobs that scrape the engines and the exporters."""

from __future__ import annotations

from servekit.errors import Problem
from servekit.hostplan import (
    GatewayHost,
    GatewayMember,
    MonitoringHost,
    Route,
    ScrapeJob,
    SecretSource,
)
from servekit.placement.firewall import ip_addresses
from servekit.placement.ollama import ollama_hosts
from servekit.placement.state import PlacementState, ServeSummary, secret_source
from servekit.spec import DCGM_EXPORTER_PORT, NODE_EXPORTER_PORT


def members(state: PlacementState, summary: ServeSummary, gateway: str) -> list[GatewayMember]:
    """The engine endpoints behind a served model as the gateway host reaches them, each with
    the replica it belongs to."""
    found: dict[str, GatewayMember] = {}
    for index, nodes in enumerate(summary.replicas):
        head = nodes[0]
        if summary.engine == "ollama":
            endpoints = [(index, summary.port)]
        else:
            endpoints = [
                (v.replica, v.port)
                for v in state.hosts[head].vllm
                if v.serve == summary.name and v.role == "server"
            ]
        for replica, port in endpoints:
            upstream = f"{state.reach(head, gateway)}:{port}"
            member = GatewayMember(
                serve=summary.name,
                replica=replica,
                host=head,
                upstream=upstream,
                engine=summary.engine,
            )
            found.setdefault(upstream, member)
    return [found[u] for u in sorted(found)]


def upstreams(state: PlacementState, summary: ServeSummary, gateway: str) -> list[str]:
    """The engine endpoints behind a served model, as the gateway host reaches them."""
    return [m.upstream for m in members(state, summary, gateway)]


def gateway_plan(state: PlacementState, host: str) -> GatewayHost | None:
    """The gateway, when it runs on this host: its port (claimed) and a route per model name."""
    gateway = state.fleet.gateway
    if gateway is None or host != state.gateway_host():
        return None
    state.claim_port(host, gateway.port, "gateway", "gateway.port")
    one_pool_per_name(state)
    routes = [
        Route(
            model=model,
            upstreams=upstreams(state, summary, host),
            engine=summary.engine,
            routing=summary.routing,
        )
        for summary in state.summaries
        for model in summary.served_names
    ]
    assert gateway.api_keys is not None
    return GatewayHost(
        port=gateway.port,
        routes=routes,
        api_keys=SecretSource.of(gateway.api_keys),
        engine_api_key=secret_source(state.fleet.engine_api_key),
        members=[m for summary in state.summaries for m in members(state, summary, host)],
        drain_timeout=gateway.drain_timeout,
        ollama_hosts=ollama_hosts(state),
        metrics_clients=monitoring_addresses(state, host),
    )


def one_pool_per_name(state: PlacementState) -> None:
    """The gateway routes a model name to one pool: two Serve entries answering the same name
    (the same checkpoint twice, or a served name) is a problem naming the second."""
    fleet = state.fleet
    index_of = {fleet.serve_name(i): i for i in range(len(fleet.serve))}
    answered: dict[str, int] = {}
    for summary in state.summaries:
        index = index_of[summary.name]
        for name in dict.fromkeys(summary.served_names):
            first = answered.setdefault(name, index)
            if first != index:
                state.problems.append(
                    Problem(
                        f"serve[{index}].served_names",
                        f"{name!r} is also answered by serve[{first}]; the gateway routes one "
                        "name to one pool",
                        f"give serve[{index}] its own name (served_names, or another model), or "
                        f"add its hosts to serve[{first}]",
                    )
                )


def monitoring_addresses(state: PlacementState, host: str) -> list[str]:
    """The monitoring host's IP addresses as `host` sees it (none on the same host, or before
    `servekit cloud apply` gives it one)."""
    monitoring = state.monitoring_host()
    if monitoring is None or monitoring == host:
        return []
    address = state.hosts[monitoring].cluster_address
    if not address:
        return []
    return ip_addresses(state, address, state.address_field(monitoring), {})


def monitoring_plan(state: PlacementState, host: str) -> MonitoringHost | None:
    """Prometheus, when it runs on this host: its port (claimed) and its scrape jobs."""
    monitoring = state.fleet.monitoring
    if monitoring is None or host != state.monitoring_host():
        return None
    state.claim_port(host, monitoring.port, "prometheus", "monitoring.port")
    return MonitoringHost(
        port=monitoring.port,
        scrape_interval=monitoring.scrape_interval,
        retention=monitoring.retention,
        jobs=scrape_jobs(state, host),
    )


def scrape_jobs(state: PlacementState, host: str) -> list[ScrapeJob]:
    """vLLM servers, node exporters on every host, DCGM exporters on GPU hosts (when enabled)."""
    engines = sorted(
        {
            f"{state.reach(h, host)}:{v.port}"
            for h, s in state.hosts.items()
            for v in s.vllm
            if v.role == "server"
        }
    )
    nodes = sorted(f"{state.reach(h, host)}:{NODE_EXPORTER_PORT}" for h in state.hosts)
    jobs = [ScrapeJob(job="vllm", targets=engines), ScrapeJob(job="node", targets=nodes)]
    if state.fleet.gpu_setup.dcgm:
        gpu_hosts = [h for h in state.hosts if state.hosts[h].free_gpus or state.hosts[h].vllm]
        targets = sorted(f"{state.reach(h, host)}:{DCGM_EXPORTER_PORT}" for h in gpu_hosts)
        jobs.append(ScrapeJob(job="dcgm", targets=targets))
    return jobs
