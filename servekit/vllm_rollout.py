"""How vLLM processes are (re)started across a fleet: who goes in which wave, and what happened.

Each process (a vLLM unit on a host) gets a status from the host's state: `ok` (nothing to do),
`fresh` (its files are new and it is not running), `down` (not running or not enabled), `loading`
(running, `/health` not answering yet) or `changed` (running with older files or venv). A
replica (one served model's copy, on one or several nodes) with a `changed` process rolls in
wave r + 1 (r: its replica index), health-gated, so replica 0 of every model first, then replica
1, ...; a replica with any other status than `ok` starts in wave 0, together with every other
such replica. If a rolling replica fails it returns to its previous files, the rollout stops
(later waves are left running as they are) and the run fails with a report.

Every host calls a wave's operations at the same place, and pyinfra makes each such call one
step of its order for all hosts, so a wave's operations (write files, restart workers, restart
servers and wait, roll back) see every host's outcome of the wave before. One `Rollout` per
pyinfra run and pass is kept by `servekit.operations.runstate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "fresh", "changed", "down", "loading"]


@dataclass
class Process:
    """One vLLM process (a unit on a host) and what the run found and did."""

    host: str
    unit: str
    serve: str
    replica: int
    role: str
    status: Status
    staged: bool = False


@dataclass
class Replica:
    """One copy of a served model (its processes on one or several hosts) and how it went."""

    serve: str
    replica: int
    processes: list[Process] = field(default_factory=list)
    failed: str | None = None
    rolled_back: str | None = None

    @property
    def name(self) -> str:
        return f"{self.serve} replica {self.replica}"

    @property
    def wave(self) -> int | None:
        """0: start with every other replica that needs starting; r + 1: roll in turn."""
        statuses = {p.status for p in self.processes}
        if "changed" in statuses:
            return self.replica + 1
        if statuses - {"ok"}:
            return 0
        return None


@dataclass
class Rollout:
    """Every replica of the fleet in one pyinfra run, and why the rollout stopped, if it did."""

    replicas: dict[tuple[str, int], Replica] = field(default_factory=dict)
    stopped_by: str | None = None
    reports: dict[str, list[str]] = field(default_factory=dict)
    """host -> lines to report at the end (failures, rollbacks, replicas left as they were)."""

    def add(self, process: Process) -> None:
        key = (process.serve, process.replica)
        replica = self.replicas.setdefault(key, Replica(process.serve, process.replica))
        replica.processes = [
            p for p in replica.processes if (p.host, p.unit) != (process.host, process.unit)
        ]
        replica.processes.append(process)

    def replica_of(self, serve: str, replica: int) -> Replica:
        return self.replicas[(serve, replica)]

    def report(self, host: str, line: str) -> None:
        self.reports.setdefault(host, []).append(line)
