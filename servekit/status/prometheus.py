"""The status snapshot from Prometheus' HTTP API: instant queries evaluated at one time (`at`,
so anyone who asks Prometheus the same queries at that time gets the same answers) and the
alerts. API: https://prometheus.io/docs/prometheus/latest/querying/api/ (`GET /api/v1/query`
with `query` and `time`; `GET /api/v1/alerts`; `GET /api/v1/targets` for a target's last error).

Metric names: vLLM's and DCGM's as servekit/monitoring/metrics.py lists them (with sources);
DCGM reports memory in MiB, utilization in %, temperature in °C
(https://github.com/NVIDIA/dcgm-exporter/blob/main/etc/default-counters.csv).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

from servekit.placement import FleetPlan
from servekit.status.declared import (
    ENGINE_JOB,
    GENERATED_TOKENS,
    KV_CACHE,
    REQUESTS,
    RUNNING,
    TTFT,
    WAITING,
    declared_engines,
    declared_hosts,
    declared_targets,
    monitoring_of,
    prometheus_duration,
    window_seconds,
)
from servekit.status.ollama import probe_all
from servekit.status.report import (
    AlertStatus,
    FleetStatus,
    GpuStatus,
    ReplicaStatus,
    TargetStatus,
    down_names,
    host_rows,
)

REPLICA = "host, model, replica"


class PrometheusError(RuntimeError):
    """Prometheus cannot be asked (unreachable, or an answer that is not the API's)."""


def selector(fleet: str, **labels: str) -> str:
    """`{fleet="...",...}`, each value a quoted PromQL string (JSON's escapes are PromQL's:
    https://prometheus.io/docs/prometheus/latest/querying/basics/#string-literals)."""
    pairs = {"fleet": fleet, **labels}
    return "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in pairs.items()) + "}"


def replica_queries(fleet: str, window: str) -> dict[str, str]:
    """The PromQL per replica (grouped by host, model, replica) for each field of the row."""
    f = selector(fleet)

    def ttft(q: float) -> str:
        buckets = f"rate({TTFT}_bucket{f}[{window}])"
        return f"histogram_quantile({q}, sum by ({REPLICA}, le) ({buckets}))"

    return {
        "up": f"up{selector(fleet, job=ENGINE_JOB)}",
        "requests_per_s": f"sum by ({REPLICA}) (rate({REQUESTS}{f}[{window}]))",
        "ttft_p50_s": ttft(0.5),
        "ttft_p95_s": ttft(0.95),
        "tokens_per_s": f"sum by ({REPLICA}) (rate({GENERATED_TOKENS}{f}[{window}]))",
        "kv_cache_pct": f"100 * max by ({REPLICA}) ({KV_CACHE}{f})",
        "running": f"sum by ({REPLICA}) ({RUNNING}{f})",
        "waiting": f"sum by ({REPLICA}) ({WAITING}{f})",
    }


def gpu_queries(fleet: str) -> dict[str, str]:
    """The PromQL per GPU (host and the exporter's `gpu` label)."""
    f = selector(fleet)
    return {
        "util_pct": f"DCGM_FI_DEV_GPU_UTIL{f}",
        "memory_used_mib": f"DCGM_FI_DEV_FB_USED{f}",
        "memory_total_mib": f"DCGM_FI_DEV_FB_USED{f} + DCGM_FI_DEV_FB_FREE{f}",
        "temperature_c": f"DCGM_FI_DEV_GPU_TEMP{f}",
    }


def targets_query(fleet: str) -> str:
    return f'up{selector(fleet)[:-1]},job!="{ENGINE_JOB}"}}'


@dataclass
class PrometheusApi:
    """A small client for the three API routes used here."""

    url: str
    client: httpx.Client

    def get(self, path: str, **params: str) -> Any:
        try:
            answer = self.client.get(self.url.rstrip("/") + path, params=params)
        except httpx.HTTPError as error:
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {error}") from None
        try:
            body = answer.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else answer.text[:200]
            raise PrometheusError(
                f"Prometheus at {self.url} answered {answer.status_code}: {detail}"
            )
        return body["data"]

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float | None]]:
        """An instant vector: (labels, value) per series; NaN values become None."""
        data = self.get("/api/v1/query", query=expr, time=f"{at:.3f}")
        series = []
        for item in data.get("result", []):
            value = float(item["value"][1])
            series.append((dict(item["metric"]), None if math.isnan(value) else value))
        return series


def _replica_key(labels: dict[str, str]) -> tuple[str, str, str]:
    return (labels.get("host", ""), labels.get("model", ""), labels.get("replica", ""))


ScrapeErrors = dict[tuple[str, tuple[str, str, str]], str]


def _replicas(
    api: PrometheusApi, plan: FleetPlan, window: str, at: float, errors: ScrapeErrors
) -> list[ReplicaStatus]:
    """A row per declared vLLM server: the answer of each query for its labels."""
    answers = {
        field: {_replica_key(labels): value for labels, value in api.query(expr, at)}
        for field, expr in replica_queries(plan.fleet, window).items()
    }
    rows = []
    for engine in declared_engines(plan):
        key = engine.key()
        up = answers["up"].get(key)
        values = {field: answers[field].get(key) for field in answers if field != "up"}
        reason = None
        if up is None:
            reason = "Prometheus does not scrape it: run deploys/monitoring.py"
        elif up != 1:
            reason = errors.get((ENGINE_JOB, key), "Prometheus cannot scrape its /metrics")
        if up != 1:  # rates over the window would still show its load from before it went down
            values = dict.fromkeys(values)
        rows.append(engine.row(up=up == 1, reason=reason, **values))
    return rows


def _scrape_errors(api: PrometheusApi) -> ScrapeErrors:
    """Each unhealthy target's last scrape error, by job and (host, model, replica)."""
    found = {}
    for target in api.get("/api/v1/targets", state="active").get("activeTargets", []):
        labels = target.get("labels", {})
        if target.get("health") != "up" and target.get("lastError"):
            key = (labels.get("job", ""), _replica_key(labels))
            found[key] = f"scrape failed: {target['lastError']}"
    return found


def _targets(
    api: PrometheusApi, plan: FleetPlan, at: float, errors: ScrapeErrors
) -> list[TargetStatus]:
    monitoring = monitoring_of(plan)
    if monitoring is None:
        return []
    up = {
        (lb.get("job", ""), lb.get("host", "")): v
        for lb, v in api.query(targets_query(plan.fleet), at)
    }
    rows = []
    for target in declared_targets(monitoring):
        value = up.get((target.job, target.host))
        reason = None
        if value is None:
            reason = "Prometheus does not scrape it: run deploys/monitoring.py"
        elif value != 1:
            reason = errors.get((target.job, (target.host, "", "")), "Prometheus cannot scrape it")
        rows.append(TargetStatus(job=target.job, host=target.host, up=value == 1, reason=reason))
    return rows


def _gpus(api: PrometheusApi, fleet: str, at: float) -> list[GpuStatus]:
    rows: dict[tuple[str, str], dict[str, float | None]] = {}
    for field, expr in gpu_queries(fleet).items():
        for labels, value in api.query(expr, at):
            rows.setdefault((labels.get("host", "?"), labels.get("gpu", "?")), {})[field] = value
    return [GpuStatus(host=h, gpu=g, **values) for (h, g), values in sorted(rows.items())]


def _alerts(api: PrometheusApi, fleet: str) -> list[AlertStatus]:
    """Firing and pending alerts of this fleet (or with no fleet label), firing first."""
    alerts = []
    for alert in api.get("/api/v1/alerts").get("alerts", []):
        labels, notes = alert.get("labels", {}), alert.get("annotations", {})
        if labels.get("fleet", fleet) != fleet:
            continue
        alerts.append(
            AlertStatus(
                name=labels.get("alertname", "?"),
                state=alert.get("state", "?"),
                severity=labels.get("severity"),
                host=labels.get("host"),
                summary=notes.get("summary"),
                active_since=alert.get("activeAt"),
            )
        )
    return sorted(alerts, key=lambda a: (a.state != "firing", a.name, a.host or ""))


def collect(
    plan: FleetPlan, url: str, window_s: float | None = None, at: float | None = None
) -> FleetStatus:
    """The fleet's status as Prometheus at `url` sees it at `at` (default: now)."""
    window_s = window_s or window_seconds(monitoring_of(plan))
    window = prometheus_duration(window_s)
    at = round(time.time() if at is None else at, 3)  # Prometheus evaluates at milliseconds
    with httpx.Client(timeout=10) as client:
        api = PrometheusApi(url, client)
        errors = _scrape_errors(api)
        replicas = _replicas(api, plan, window, at, errors)
        targets = _targets(api, plan, at, errors)
        gpus = _gpus(api, plan.fleet, at)
        alerts = _alerts(api, plan.fleet)
    ollama = probe_all(plan)
    return FleetStatus(
        fleet=plan.fleet,
        source="prometheus",
        source_url=url,
        at=at,
        window_s=window_s,
        replicas=replicas,
        ollama=ollama,
        hosts=host_rows(declared_hosts(plan), replicas, targets, gpus),
        targets=targets,
        gpus=gpus,
        alerts=alerts,
        down=down_names(replicas, targets, ollama),
    )
