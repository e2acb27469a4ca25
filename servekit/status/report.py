"""The status snapshot `servekit status --json` prints (layout `servekit.status/1`: keys are only
ever added within a version). Rates are per second over `window_s`; a value nobody measured
(no requests in the window, no GPU exporter) is null, never 0."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "servekit.status/1"

Source = Literal["prometheus", "engines"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaStatus(Record):
    """One vLLM server (a replica's head: multi-node replicas answer on their head only)."""

    host: str
    model: str = Field(description="the Serve entry's name (the `model` label)")
    replica: int
    unit: str
    up: bool = Field(description="its /metrics answers")
    ready: bool | None = Field(None, description="/health answers 200 (engines mode only)")
    reason: str | None = Field(None, description="why it is down")
    requests_per_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    tokens_per_s: float | None = Field(None, description="generated tokens per second")
    kv_cache_pct: float | None = Field(None, description="KV cache in use, 0 to 100")
    running: float | None = None
    waiting: float | None = None

    @property
    def name(self) -> str:
        return f"replica {self.model}#{self.replica} on {self.host} ({self.unit})"


class GpuStatus(Record):
    """One GPU as the DCGM exporter reports it."""

    host: str
    gpu: str = Field(description="the exporter's `gpu` label (its index)")
    util_pct: float | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    temperature_c: float | None = None


class TargetStatus(Record):
    """A declared exporter (node, DCGM, the gateway's HAProxy) as Prometheus scrapes it."""

    job: str
    host: str
    up: bool
    reason: str | None = None

    @property
    def name(self) -> str:
        return f"{self.job} exporter on {self.host}"


class OllamaStatus(Record):
    """One Ollama server (it has no /metrics: its version route says whether it answers)."""

    host: str
    models: list[str]
    up: bool | None = Field(description="None: this machine cannot reach it (loopback there)")
    version: str | None = None
    reason: str | None = None

    @property
    def name(self) -> str:
        return f"ollama on {self.host}"


class HostStatus(Record):
    """One declared machine: its roles, its replicas up, its exporters, its GPUs reporting."""

    host: str
    roles: list[str]
    replicas_up: int
    replicas: int
    exporters_down: list[str] = Field(default_factory=list, description="jobs not answering")
    exporters: int = Field(0, description="exporters declared (prometheus mode)")
    gpus: int = Field(description="GPUs declared")
    gpus_reporting: int | None = Field(None, description="GPUs DCGM reports (None: not read)")


class AlertStatus(Record):
    """A firing (or pending) alert, from Prometheus' /api/v1/alerts."""

    name: str
    state: str
    severity: str | None = None
    host: str | None = None
    summary: str | None = None
    active_since: str | None = None


class FleetStatus(Record):
    """The whole snapshot."""

    schema_: str = Field(SCHEMA, alias="schema")
    fleet: str
    source: Source
    source_url: str | None = Field(None, description="Prometheus' URL (prometheus mode)")
    at: float = Field(description="evaluation time (Unix seconds): Prometheus answers the same")
    window_s: float = Field(description="rates and quantiles cover this many seconds before `at`")
    replicas: list[ReplicaStatus]
    ollama: list[OllamaStatus] = Field(default_factory=list)
    hosts: list[HostStatus] = Field(default_factory=list)
    targets: list[TargetStatus] = Field(default_factory=list)
    gpus: list[GpuStatus] = Field(default_factory=list)
    alerts: list[AlertStatus] = Field(default_factory=list)
    down: list[str] = Field(default_factory=list, description="what is declared and down, named")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1)


def host_rows(
    declared: list[tuple[str, list[str], int]],
    replicas: list[ReplicaStatus],
    targets: list[TargetStatus],
    gpus: list[GpuStatus] | None,
) -> list[HostStatus]:
    """A row per declared (host, roles, GPUs); `gpus` None when no GPU exporter was read."""
    rows = []
    for host, roles, gpu_count in declared:
        own = [r for r in replicas if r.host == host]
        exporters = [t for t in targets if t.host == host]
        reporting = None
        if gpus is not None and any(t.job == "dcgm" for t in exporters):
            reporting = sum(1 for g in gpus if g.host == host)
        rows.append(
            HostStatus(
                host=host,
                roles=roles,
                replicas_up=sum(1 for r in own if r.up),
                replicas=len(own),
                exporters_down=[t.job for t in exporters if not t.up],
                exporters=len(exporters),
                gpus=gpu_count,
                gpus_reporting=reporting,
            )
        )
    return rows


def down_names(
    replicas: list[ReplicaStatus],
    targets: list[TargetStatus],
    ollama: list[OllamaStatus] | None = None,
) -> list[str]:
    """Every declared replica, exporter or Ollama server that is down, named with the reason
    (an Ollama server this machine cannot reach is not known to be down)."""
    names = [f"{r.name}: {r.reason or 'down'}" for r in replicas if not r.up]
    names += [f"{r.name}: {r.reason or 'not ready'}" for r in replicas if r.up and r.ready is False]
    names += [f"{o.name}: {o.reason or 'down'}" for o in ollama or [] if o.up is False]
    return names + [f"{t.name}: {t.reason or 'down'}" for t in targets if not t.up]
