"""What `servekit status INVENTORY` does once its options are read: pick the source (Prometheus
when the fleet declares monitoring, else the engines), print one snapshot (`--once`, `--json`)
or refresh a live view, and exit non-zero naming whatever declared is down."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from servekit.placement import FleetPlan
from servekit.status.declared import default_prometheus_url, monitoring_of
from servekit.status.engines import EngineWatcher
from servekit.status.prometheus import PrometheusError, collect
from servekit.status.report import FleetStatus
from servekit.status.view import render, watch

DOWN = 1
"""Exit code when something declared is down."""
NO_SOURCE = 3
"""Exit code when Prometheus cannot be asked."""


@dataclass(frozen=True)
class StatusOptions:
    prometheus: str | None = None
    engines: bool = False
    once: bool = False
    as_json: bool = False
    interval_s: float = 5.0
    window_s: float | None = None


def snapshot_source(plan: FleetPlan, options: StatusOptions) -> Callable[[], FleetStatus]:
    """A function returning a fresh snapshot each call, from Prometheus or the engines."""
    monitoring = monitoring_of(plan)
    if monitoring is not None and not options.engines:
        url = options.prometheus or default_prometheus_url(monitoring)
        return lambda: collect(plan, url, options.window_s)
    if options.prometheus is not None and not options.engines:
        url = options.prometheus
        return lambda: collect(plan, url, options.window_s)
    watcher = EngineWatcher(plan)
    first_wait = min(options.interval_s, 5.0)
    return lambda: watcher.snapshot(first_wait)


def tunnel_hint(plan: FleetPlan) -> str:
    """How to reach a Prometheus that listens on the monitoring host's loopback."""
    monitoring = monitoring_of(plan)
    host = next((h for h in plan.hosts.values() if h.monitoring is not None), None)
    if monitoring is None or host is None:
        return ""
    port = monitoring.port
    return (
        f"; Prometheus listens on {host.name}'s loopback: open a tunnel first "
        f"(`ssh -N -L {port}:127.0.0.1:{port} {host.address or host.name}`), or give "
        "--prometheus URL (or --engines to read the engines' /metrics instead)"
    )


def run_status(plan: FleetPlan, options: StatusOptions, out: Console, err: Console) -> int:
    """Print the status (once or live); the exit code: 0, DOWN or NO_SOURCE."""
    snapshot = snapshot_source(plan, options)
    try:
        status = snapshot()
    except PrometheusError as error:
        err.print(f"[bold red]error:[/] {escape(str(error) + tunnel_hint(plan))}")
        return NO_SOURCE
    if options.as_json:
        print(status.to_json())
        for name in status.down:  # the JSON names them too; stderr is for the person running it
            err.print(Text(f"down: {name}", style="red"))
    elif options.once:
        out.print(render(status))
    else:
        status = live(out, snapshot, status, options.interval_s)
    return DOWN if status.down else 0


def live(
    out: Console, snapshot: Callable[[], FleetStatus], first: FleetStatus, every_s: float
) -> FleetStatus:
    """Refresh until Ctrl-C; a failed refresh shows its error and the next one tries again."""
    latest = [first]

    def refresh() -> FleetStatus | Text:
        try:
            latest.append(snapshot())
        except PrometheusError as error:
            return Text(f"error: {error}", style="red")
        return latest[-1]

    watch(out, first, refresh, every_s)
    return latest[-1]
