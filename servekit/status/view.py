"""The status as terminal tables (replicas, GPUs, exporters, alerts), once or live."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from servekit.status.report import FleetStatus, ReplicaStatus

REPLICA_COLUMNS = (
    "host",
    "model",
    "replica",
    "state",
    "req/s",
    "TTFT p50",
    "TTFT p95",
    "tok/s",
    "KV cache",
    "running",
    "waiting",
)


def _number(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms" if value < 10 else f"{value:.1f} s"


def _state(row: ReplicaStatus) -> Text:
    if not row.up:
        return Text("down", style="bold red")
    if row.ready is False:
        return Text("not ready", style="yellow")
    return Text("up", style="green")


def replicas_table(status: FleetStatus) -> Table:
    when = dt.datetime.fromtimestamp(status.at, dt.UTC).strftime("%H:%M:%S UTC")
    source = status.source_url or "the engines' /metrics"
    table = Table(
        title=f"fleet {status.fleet} at {when}, from {source} (rates over {status.window_s:g} s)",
        title_justify="left",
    )
    for column in REPLICA_COLUMNS:
        table.add_column(column, justify="right" if column not in ("host", "model") else "left")
    for row in status.replicas:
        table.add_row(
            Text(row.host),
            Text(row.model),
            str(row.replica),
            _state(row),
            _number(row.requests_per_s),
            _seconds(row.ttft_p50_s),
            _seconds(row.ttft_p95_s),
            _number(row.tokens_per_s, "{:,.0f}"),
            _number(row.kv_cache_pct, "{:.1f} %"),
            _number(row.running, "{:g}"),
            _number(row.waiting, "{:g}"),
        )
    return table


def hosts_table(status: FleetStatus) -> Table:
    """A row per declared machine: roles, replicas up, exporters, GPUs reporting."""
    table = Table(title="hosts", title_justify="left")
    for column in ("host", "roles", "replicas up", "exporters", "GPUs"):
        table.add_column(column, justify="left" if column in ("host", "roles") else "right")
    for host in status.hosts:
        replicas = f"{host.replicas_up} of {host.replicas}" if host.replicas else "-"
        exporters: str | Text = "-"
        if host.exporters_down:
            exporters = Text("down: " + ", ".join(host.exporters_down), style="bold red")
        elif host.exporters:
            exporters = f"{host.exporters} up"
        gpus = "-" if not host.gpus else f"{host.gpus} declared"
        if host.gpus_reporting is not None:
            gpus = f"{host.gpus_reporting} of {host.gpus} report"
        style = "bold red" if host.replicas_up < host.replicas else ""
        table.add_row(
            Text(host.host),
            Text(", ".join(host.roles)),
            Text(replicas, style=style),
            exporters,
            gpus,
        )
    return table


def ollama_table(status: FleetStatus) -> Table:
    """A row per Ollama server: its models, whether it answers, its version."""
    table = Table(title="Ollama", title_justify="left")
    for column in ("host", "models", "state", "version"):
        table.add_column(column)
    for server in status.ollama:
        state = Text("up", style="green")
        if server.up is None:
            state = Text("not reachable from here", style="yellow")
        elif not server.up:
            state = Text("down", style="bold red")
        table.add_row(
            Text(server.host), Text(", ".join(server.models)), state, Text(server.version or "-")
        )
    return table


def gpus_table(status: FleetStatus) -> Table:
    table = Table(title="GPUs (DCGM)", title_justify="left")
    for column in ("host", "gpu", "util", "memory", "temp"):
        table.add_column(column, justify="left" if column == "host" else "right")
    for gpu in status.gpus:
        used, whole = gpu.memory_used_mib, gpu.memory_total_mib
        memory = (
            "-"
            if used is None
            else f"{used / 1024:.1f}" + (f" / {whole / 1024:.1f} GiB" if whole else " GiB")
        )
        table.add_row(
            Text(gpu.host),
            Text(gpu.gpu),
            _number(gpu.util_pct, "{:.0f} %"),
            memory,
            _number(gpu.temperature_c, "{:.0f} °C"),
        )
    return table


def problems(status: FleetStatus) -> list[Text]:
    """Lines for what is down and for each firing or pending alert."""
    lines = [Text(f"DOWN {name}", style="bold red") for name in status.down]
    for alert in status.alerts:
        style = "red" if alert.state == "firing" else "yellow"
        where = f" on {alert.host}" if alert.host else ""
        summary = f": {alert.summary}" if alert.summary else ""
        lines.append(Text(f"{alert.state.upper()} {alert.name}{where}{summary}", style=style))
    if not status.down and not any(a.state == "firing" for a in status.alerts):
        lines.append(Text("everything declared is up; no alert is firing", style="green"))
    return lines


def render(status: FleetStatus) -> RenderableType:
    parts: list[RenderableType] = [replicas_table(status)]
    if status.ollama:
        parts.append(ollama_table(status))
    parts.append(hosts_table(status))
    if status.gpus:
        parts.append(gpus_table(status))
    parts.extend(problems(status))
    return Group(*parts)


def watch(
    console: Console,
    first: FleetStatus,
    refresh: Callable[[], FleetStatus | Text],
    every_s: float,
) -> None:
    """Show `first`, then what `refresh` returns every `every_s` seconds, until Ctrl-C."""
    with Live(render(first), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(every_s)
                latest = refresh()
                live.update(latest if isinstance(latest, Text) else render(latest), refresh=True)
        except KeyboardInterrupt:
            return
