"""Placing what surrounds the engines: the gateway's routes to every replica, and the
Prometheus jobs that scrape the engines and the exporters."""

from __future__ import annotations

from servekit.errors import Problem
from servekit.hostplan import (
    ExportersPlan,
    GatewayHost,
    GatewayMember,
    GrafanaPlan,
    MonitoringHost,
    Route,
    ScrapeJob,
    ScrapeTarget,
    SecretSource,
)
from servekit.monitoring.layout import OLLAMA_PROBE_MODULE
from servekit.placement.firewall import ip_addresses
from servekit.placement.ollama import ollama_host, ollama_hosts
from servekit.placement.state import (
    ANY,
    LOOPBACK,
    PlacementState,
    ServeSummary,
    is_ip,
    secret_source,
)
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
        grafana=grafana_plan(state, host),
    )


def grafana_plan(state: PlacementState, host: str) -> GrafanaPlan | None:
    """Grafana beside Prometheus when the fleet names a source for it: its port (claimed)."""
    monitoring = state.fleet.monitoring
    grafana = monitoring.grafana if monitoring is not None else None
    if grafana is None:
        return None
    state.claim_port(host, grafana.port, "grafana", "monitoring.grafana.port")
    return GrafanaPlan(
        apt_url=grafana.apt_url,
        suite=grafana.suite,
        component=grafana.component,
        signing_key=str(grafana.signing_key),
        package=grafana.package,
        port=grafana.port,
        admin_password=SecretSource.of(grafana.admin_password),
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
        if state.fleet.machine_of(h).os == "linux"
    ]
    jobs = [ScrapeJob(job="vllm", targets=engines), ScrapeJob(job="node", targets=nodes)]
    return jobs + gateway_job(state, host) + dcgm_job(state, host) + ollama_job(state, host)


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


def dcgm_hosts(state: PlacementState) -> list[str]:
    """Hosts with a DCGM exporter: NVIDIA GPU hosts, when `GpuSetup(dcgm=True)`."""
    if not state.fleet.gpu_setup.dcgm:
        return []
    return sorted(h for h, s in state.hosts.items() if s.free_gpus or s.vllm)


def dcgm_job(state: PlacementState, host: str) -> list[ScrapeJob]:
    """DCGM exporters on GPU hosts (none unless `GpuSetup(dcgm=True)`)."""
    if not state.fleet.gpu_setup.dcgm:
        return []
    targets = [
        ScrapeTarget(
            address=f"{state.reach(h, host)}:{DCGM_EXPORTER_PORT}",
            labels=host_labels(state, h, "gpu"),
        )
        for h in dcgm_hosts(state)
    ]
    return [ScrapeJob(job="dcgm", targets=targets)]


def ollama_job(state: PlacementState, host: str) -> list[ScrapeJob]:
    """Ollama APIs the monitoring host reaches (beyond loopback, or on itself), probed through
    the blackbox exporter: one target per replica of each Ollama-served model."""
    targets = []
    for summary in state.summaries:
        if summary.engine != "ollama":
            continue
        for replica, nodes in enumerate(summary.replicas):
            served = ollama_host(state, nodes[0])
            listen = served.listen.rpartition(":")[0].strip("[]") if served else LOOPBACK
            if listen in (LOOPBACK, "::1", "localhost") and nodes[0] != host:
                continue  # only its own host reaches it (README: Monitoring)
            targets.append(
                ScrapeTarget(
                    address=f"{state.reach(nodes[0], host)}:{summary.port}",
                    labels=host_labels(state, nodes[0], "ollama")
                    | {"model": summary.name, "replica": str(replica)},
                )
            )
    if not targets:
        return []
    return [
        ScrapeJob(
            job="ollama", targets=targets, metrics_path="/probe", probe_module=OLLAMA_PROBE_MODULE
        )
    ]


def exporters_plan(state: PlacementState, host: str) -> ExportersPlan | None:
    """The exporters of a Linux host in a fleet with monitoring, listening where the monitoring
    host reaches it: loopback on the monitoring host, else its cluster address (every address
    when that is a host name: the firewall then admits only the monitoring host)."""
    monitoring = state.monitoring_host()
    if monitoring is None or state.fleet.machine_of(host).os != "linux":
        return None
    address = state.hosts[host].cluster_address
    listen = LOOPBACK if host == monitoring else str(address) if is_ip(address) else ANY
    return ExportersPlan(
        listen_address=listen,
        node_port=NODE_EXPORTER_PORT,
        dcgm_port=DCGM_EXPORTER_PORT if host in dcgm_hosts(state) else None,
    )
