"""Placing what surrounds the engines: the gateway's routes to every replica, and the
Prometheus jobs that scrape the engines and the exporters."""

from __future__ import annotations

from servekit.hostplan import (
    GatewayHost,
    MonitoringHost,
    Route,
    ScrapeJob,
    ScrapeTarget,
    SecretSource,
)
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
        Route(model=model, upstreams=upstreams(state, summary, host), engine=summary.engine)
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
    """Prometheus, when it runs on this host: its port (claimed), its scrape jobs and the
    alerts' thresholds."""
    monitoring = state.fleet.monitoring
    if monitoring is None or host != state.monitoring_host():
        return None
    state.claim_port(host, monitoring.port, "prometheus", "monitoring.port")
    timeouts = [v.ready_timeout_s for s in state.hosts.values() for v in s.vllm]
    return MonitoringHost(
        port=monitoring.port,
        scrape_interval=monitoring.scrape_interval,
        retention=monitoring.retention,
        jobs=scrape_jobs(state, host),
        alert_webhook=secret_source(monitoring.alert_webhook),
        ttft_p95_seconds=monitoring.ttft_p95_seconds,
        waiting_requests=monitoring.waiting_requests,
        ready_minutes=max([15, *(-(-t // 60) for t in timeouts)]),
    )


def host_labels(state: PlacementState, name: str, role: str) -> dict[str, str]:
    """The labels every series of a target on host `name` gets (GPU hosts: count, NVSwitch)."""
    labels = {"fleet": state.fleet.name, "host": name, "role": role}
    gpu = state.gpu_of(name)
    if gpu is not None and not gpu.info.apple:
        labels["gpus"] = str(gpu.count)
        labels["nvswitch"] = "true" if gpu.info.nvswitch and gpu.count == 8 else "false"
    return labels


def scrape_jobs(state: PlacementState, host: str) -> list[ScrapeJob]:
    """vLLM servers (one target per replica head), node exporters on every host, the gateway's
    HAProxy exporter, DCGM exporters on GPU hosts (when enabled)."""
    engines = [
        ScrapeTarget(
            address=f"{state.reach(h, host)}:{v.port}",
            labels=host_labels(state, h, "engine")
            | {"model": v.serve, "replica": str(v.replica), "unit": v.unit},
        )
        for h, s in sorted(state.hosts.items())
        for v in s.vllm
        if v.role == "server"
    ]
    nodes = [
        ScrapeTarget(
            address=f"{state.reach(h, host)}:{NODE_EXPORTER_PORT}",
            labels=host_labels(state, h, "node"),
        )
        for h in sorted(state.hosts)
    ]
    jobs = [ScrapeJob(job="vllm", targets=engines), ScrapeJob(job="node", targets=nodes)]
    return jobs + gateway_job(state, host) + dcgm_job(state, host)


def gateway_job(state: PlacementState, host: str) -> list[ScrapeJob]:
    """HAProxy's exporter on the gateway port (none without a gateway)."""
    gateway, spec = state.gateway_host(), state.fleet.gateway
    if gateway is None or spec is None:
        return []
    target = ScrapeTarget(
        address=f"{state.reach(gateway, host)}:{spec.port}",
        labels=host_labels(state, gateway, "gateway"),
    )
    return [ScrapeJob(job="gateway", targets=[target])]


def dcgm_job(state: PlacementState, host: str) -> list[ScrapeJob]:
    """DCGM exporters on GPU hosts (none unless `GpuSetup(dcgm=True)`)."""
    if not state.fleet.gpu_setup.dcgm:
        return []
    gpu_hosts = sorted(h for h, s in state.hosts.items() if s.free_gpus or s.vllm)
    targets = [
        ScrapeTarget(
            address=f"{state.reach(h, host)}:{DCGM_EXPORTER_PORT}",
            labels=host_labels(state, h, "gpu"),
        )
        for h in gpu_hosts
    ]
    return [ScrapeJob(job="dcgm", targets=targets)]
