"""What a planned fleet declares, as `servekit status` looks for it: each vLLM server (a
replica's head) with the labels Prometheus gives its series (servekit/placement/services.py
`scrape_jobs`: `host`, `model`, `replica`, `unit`), the other scrape targets, and where
Prometheus listens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servekit.bench.target import TargetError, reach_url
from servekit.hostplan import MonitoringHost
from servekit.placement import FleetPlan
from servekit.status.report import ReplicaStatus

ENGINE_JOB = "vllm"
"""The scrape job of the vLLM servers (servekit/placement/services.py `scrape_jobs`)."""

# vLLM 0.33's metric names (sources in servekit/monitoring/metrics.py; a unit test checks each
# is in its VLLM_METRICS). vLLM's --api-key guards only paths under /v1, so /metrics and
# /health need no key: AuthenticationMiddleware in
# https://github.com/vllm-project/vllm/blob/main/vllm/entrypoints/openai/server_utils.py
REQUESTS = "vllm:request_success_total"
GENERATED_TOKENS = "vllm:generation_tokens_total"
TTFT = "vllm:time_to_first_token_seconds"
KV_CACHE = "vllm:kv_cache_usage_perc"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


@dataclass(frozen=True)
class DeclaredEngine:
    """One vLLM server the fleet declares; `url` is how this machine reaches it (None, with
    `unreachable` saying why, when it cannot: no address yet, or bound to loopback)."""

    host: str
    model: str
    replica: int
    unit: str
    url: str | None
    unreachable: str | None = None

    def key(self) -> tuple[str, str, str]:
        return (self.host, self.model, str(self.replica))

    def row(self, **fields: Any) -> ReplicaStatus:
        """Its status row: who it is, and the `fields` measured."""
        return ReplicaStatus(
            host=self.host, model=self.model, replica=self.replica, unit=self.unit, **fields
        )


@dataclass(frozen=True)
class DeclaredTarget:
    """A scrape target besides the engines (node, DCGM, gateway exporters)."""

    job: str
    host: str


def declared_engines(plan: FleetPlan) -> list[DeclaredEngine]:
    """Every vLLM server of the fleet, in host order."""
    engines: list[DeclaredEngine] = []
    for host in plan.hosts.values():
        for instance in host.vllm:
            if instance.role != "server":
                continue
            try:
                url, why = reach_url(host, instance.bind_address, instance.port, "vLLM"), None
            except TargetError as error:
                url, why = None, str(error)
            engines.append(
                DeclaredEngine(
                    host=host.name,
                    model=instance.serve,
                    replica=instance.replica,
                    unit=instance.unit,
                    url=url,
                    unreachable=why,
                )
            )
    return engines


@dataclass(frozen=True)
class DeclaredOllama:
    """An Ollama server the fleet declares and its models; `url` as for DeclaredEngine."""

    host: str
    models: tuple[str, ...]
    url: str | None
    unreachable: str | None = None


def declared_ollamas(plan: FleetPlan) -> list[DeclaredOllama]:
    """Every Ollama server of the fleet, in host order."""
    found: list[DeclaredOllama] = []
    for host in plan.hosts.values():
        if host.ollama is None:
            continue
        bind, _, port = host.ollama.listen.rpartition(":")
        try:
            url, why = reach_url(host, bind.strip("[]"), int(port), "Ollama"), None
        except TargetError as error:
            url, why = None, str(error)
        found.append(DeclaredOllama(host.name, tuple(host.ollama.models), url, why))
    return found


def declared_hosts(plan: FleetPlan) -> list[tuple[str, list[str], int]]:
    """Every machine of the fleet: its name, roles and declared GPU count."""
    return [(h.name, list(h.roles), h.gpu_count) for h in plan.hosts.values()]


def monitoring_of(plan: FleetPlan) -> MonitoringHost | None:
    """The fleet's Prometheus (None when the fleet declares no monitoring)."""
    return next((h.monitoring for h in plan.hosts.values() if h.monitoring is not None), None)


def declared_targets(monitoring: MonitoringHost) -> list[DeclaredTarget]:
    """The scrape targets other than the engines, from the monitoring plan."""
    return [
        DeclaredTarget(job=job.job, host=target.labels["host"])
        for job in monitoring.jobs
        if job.job != ENGINE_JOB
        for target in job.targets
    ]


def default_prometheus_url(monitoring: MonitoringHost) -> str:
    """Prometheus listens on the monitoring host's loopback: this URL works on that host, or
    here through `ssh -N -L PORT:127.0.0.1:PORT MONITORING_HOST`."""
    return f"http://127.0.0.1:{monitoring.port}"


def window_seconds(monitoring: MonitoringHost | None) -> float:
    """The rate window: one minute, or four scrape intervals when those are longer (rate()
    needs two samples in its window; four leave room for a missed scrape)."""
    if monitoring is None:
        return 60.0
    return max(60.0, 4 * duration_seconds(monitoring.scrape_interval))


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration_seconds(text: str) -> float:
    """A Prometheus duration (`15s`, `1m30s`, `500ms`) in seconds."""
    import re

    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Prometheus duration")
    return sum(int(n) * (_UNITS[u] if u != "y" else 31536000.0) for n, u in parts)


def prometheus_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (`90` → `1m30s`; under a second: milliseconds)."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole, text = millis // 1000, ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            text += f"{whole // size}{unit}"
            whole %= size
    return text or "0s"
