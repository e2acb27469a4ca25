"""How vLLM processes are (re)started across a fleet: who goes in which wave, and what happened.

Each replica (one served model's copy, on one or several nodes) gets a status from the state of
its processes: `ok` (nothing to do), `start` (not running, or still loading: start it or wait for
it, all such replicas at once) or `roll` (running with an older configuration or venv: restart
it, health-gated, one replica at a time). Replicas to roll go in waves by replica index, so
replica 0 of every model first, then replica 1, ...; if one fails it returns to its previous
files, the rollout stops (later waves are left running as they are) and the run fails with a
report.

pyinfra executes an operation on every host before the next operation starts, so a wave's
operations (write files, restart workers, restart servers and wait, roll back) see every host's
outcome of the wave before. The registry lives in this process, one per pyinfra run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pyinfra.context import state

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


_rollouts: dict[tuple[int, bool], Rollout] = {}


def current() -> Rollout:
    """This pyinfra run's registry (one for the change-detection pass, one for execution)."""
    key = (id(cast(Any, state)._get_module()), bool(state.is_executing))
    return _rollouts.setdefault(key, Rollout())
