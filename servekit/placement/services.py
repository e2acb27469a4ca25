"""Placing what surrounds the engines: the gateway's routes to every replica, and the
Prometheus jobs that scrape the engines and the exporters."""

from __future__ import annotations

from servekit.hostplan import GatewayHost, MonitoringHost, Route, ScrapeJob, SecretSource
from servekit.placement.state import PlacementState, ServeSummary, secret_source
from servekit.spec import DCGM_EXPORTER_PORT, NODE_EXPORTER_PORT


def upstreams(state: PlacementState, summary: ServeSummary, gateway: str) -> list[str]:
    """The engine endpoints behind a served model, as the gateway host reaches them."""
    found = []
    for nodes in summary.replicas:
        head = nodes[0]
        if summary.engine == "ollama":
            found.append(f"{state.reach(head, gateway)}:{summary.port}")
        else:
            found += [
                f"{state.reach(head, gateway)}:{v.port}"
                for v in state.hosts[head].vllm
                if v.serve == summary.name and v.role == "server"
            ]
    return sorted(set(found))


def gateway_plan(state: PlacementState, host: str) -> GatewayHost | None:
    """The gateway, when it runs on this host: its port (claimed) and a route per model name."""
    gateway = state.fleet.gateway
    if gateway is None or host != state.gateway_host():
        return None
    state.claim_port(host, gateway.port, "gateway", "gateway.port")
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
    )


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
