"""The wall-clock range a benchmark covered and, when the fleet has monitoring, a link to that
range in its Prometheus: the engines' load and the GPUs beside the client's numbers.

The link opens Prometheus' expression browser (`/graph`) with one graph panel per query; its
parameters are those Prometheus' web UI reads and writes (`g<N>.expr`, `g<N>.tab=0` for a
graph, `g<N>.range_input` a duration, `g<N>.end_input` as `YYYY-MM-DD HH:mm:ss` UTC,
`g<N>.step_input` seconds): `toQueryString` and `parseOption` in
https://github.com/prometheus/prometheus/blob/main/web/ui/react-app/src/utils/index.ts
"""

from __future__ import annotations

import datetime as dt
import math
from urllib.parse import urlencode

from servekit.bench.schema import PrometheusLink, TimeRange
from servekit.placement import FleetPlan
from servekit.status.declared import default_prometheus_url, monitoring_of, prometheus_duration
from servekit.status.prometheus import gpu_queries, replica_queries

MARGIN_S = 60
"""Graphs start and end a rate window (1m) beyond the run, so its ramp shows whole."""
POINTS = 250
"""About this many points per graph."""
RATE_WINDOW = "1m"


def _utc(unix: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(unix, dt.UTC)


def time_range(start_unix: float, end_unix: float) -> TimeRange:
    return TimeRange(
        start_unix=start_unix,
        end_unix=end_unix,
        start=_utc(start_unix).isoformat(timespec="milliseconds"),
        end=_utc(end_unix).isoformat(timespec="milliseconds"),
    )


def run_queries(fleet: str) -> list[str]:
    """Per replica tokens/s, requests/s, TTFT p95 and KV cache; per GPU utilization."""
    replica = replica_queries(fleet, RATE_WINDOW)
    fields = ("tokens_per_s", "requests_per_s", "ttft_p95_s", "kv_cache_pct")
    return [replica[f] for f in fields] + [gpu_queries(fleet)["util_pct"]]


def prometheus_link(url: str, fleet: str, span: TimeRange) -> PrometheusLink:
    """The expression browser's URL showing `span` (with a margin) for the fleet's queries."""
    first = math.floor(span.start_unix) - MARGIN_S
    last = math.ceil(span.end_unix) + MARGIN_S
    step = max(1, (last - first) // POINTS)
    end = _utc(last).strftime("%Y-%m-%d %H:%M:%S")
    params: list[tuple[str, str]] = []
    queries = run_queries(fleet)
    for number, expr in enumerate(queries):
        panel = f"g{number}."
        params += [
            (panel + "expr", expr),
            (panel + "tab", "0"),
            (panel + "stacked", "0"),
            (panel + "range_input", prometheus_duration(last - first)),
            (panel + "end_input", end),
            (panel + "moment_input", end),
            (panel + "step_input", str(step)),
        ]
    graph = f"{url.rstrip('/')}/graph?{urlencode(params)}"
    return PrometheusLink(url=url, graph_url=graph, queries=queries, step_s=step)


def fleet_prometheus(plan: FleetPlan, override: str | None) -> str | None:
    """The Prometheus to link (`--prometheus`, else the monitoring host's loopback URL, which
    an SSH tunnel makes this machine's); None without monitoring or override."""
    if override is not None:
        return override
    monitoring = monitoring_of(plan)
    return None if monitoring is None else default_prometheus_url(monitoring)
