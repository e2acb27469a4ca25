"""The vLLM processes' rollout as operations: units no longer planned removed, each process
classified, then per wave its files staged, workers and servers (re)started, failures rolled
back, and at the end the venv links moved and a report (see `servekit.vllm_rollout` for the
waves).

The operations of one wave run on every host before the next starts, and share the fleet's
`Rollout` of this pyinfra run and pass (`servekit.operations.runstate`).
"""

from __future__ import annotations

from typing import Any

from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit.hostplan import HostPlan, VllmInstance
from servekit.operations.common import Commands
from servekit.operations.hoststate import (
    announce,
    apply_files,
    differs,
    file_entry,
    python_command,
    stale,
    stdin_json,
    streamed,
    view,
)
from servekit.operations.runstate import rollout, this_host
from servekit.operations.vllm_work import (
    WORKER_READY_S,
    HostWork,
    desired_files,
    host_work,
    is_active,
    units_state,
)
from servekit.render import RenderedFile
from servekit.shell import quote as q
from servekit.vllm_layout import LAYOUT
from servekit.vllm_rollout import Process, Status


@operation()
def prune(plan: HostPlan) -> Commands:
    """
    Stop and remove vLLM and Ray units servekit wrote earlier that the plan no longer has (a
    model moved away, a replica count lowered), with their configs.

    + plan: the host's plan

    **Example:**

    .. code:: python

        prune(name="Remove units no longer planned", plan=plan)
    """
    work = host_work(plan)
    state = view(work.spec())
    wanted = set(work.units())
    stale_units = [
        path.rsplit("/", 1)[-1]
        for path, first_line in (state.get("globs") or {}).items()
        if path.startswith(f"{LAYOUT.unit_dir}/")
        and first_line
        and LAYOUT.unit_mark in first_line
        and path.rsplit("/", 1)[-1] not in wanted
    ]
    if not stale_units:
        host.noop("no units to remove")
        return
    announce(*(f"stop and remove {unit} and its files" for unit in stale_units))
    commands = [
        f"systemctl disable --now {q(unit)} >/dev/null 2>&1; "
        f"rm -rf {' '.join(q(f) for f in LAYOUT.unit_files(unit))}"
        for unit in stale_units
    ]
    commands.append("systemctl daemon-reload")
    yield "; ".join(commands)
    stale()


def _status(
    state: dict[str, Any], desired: dict[str, RenderedFile], instance: VllmInstance
) -> Status:
    """What one process needs, from the host's state and its desired files."""
    files_differ = any(
        differs(desired[p], state["paths"].get(p)) for p in LAYOUT.instance_files(instance)
    )
    unit_state = units_state(state, instance.unit)
    active = is_active(unit_state) and unit_state.get("SubState") != "auto-restart"
    enabled = unit_state.get("UnitFileState") == "enabled"
    if (files_differ or this_host().venv_rebuilt) and active:
        return "changed"
    if files_differ or not active or not enabled:
        return "fresh" if files_differ else "down"
    if instance.role == "server" and (state.get("health") or {}).get(instance.unit) != 200:
        return "loading"
    return "ok"


@operation()
def classify(plan: HostPlan) -> Commands:
    """
    Record what each vLLM process on this host needs (nothing, a start, a rolling restart) in
    the fleet's rollout; runs no command.

    + plan: the host's plan

    **Example:**

    .. code:: python

        classify(name="Inspect the vLLM processes", plan=plan)
    """
    work = host_work(plan)
    state = view(work.spec())
    desired = desired_files(work, state)
    for instance in work.processes:
        status = _status(state, desired, instance)
        rollout().add(
            Process(host.name, instance.unit, instance.serve, instance.replica, instance.role,
                    status)
        )  # fmt: skip
    return
    yield  # an operation: nothing to run


def wave_processes(work: HostWork, wave: int) -> list[tuple[VllmInstance, Process]]:
    """This host's processes in replicas of `wave`."""
    result = []
    for instance in work.processes:
        replica = rollout().replicas.get((instance.serve, instance.replica))
        if replica is None or replica.wave != wave:
            continue
        for process in replica.processes:
            if (process.host, process.unit) == (host.name, instance.unit):
                result.append((instance, process))
    return result


def _report_not_rolled(mine: list[tuple[VllmInstance, Process]]) -> None:
    """Note, for the final report, the processes a stopped rollout leaves as they are."""
    fleet = rollout()
    for instance, _process in mine:
        fleet.report(
            host.name,
            f"{instance.unit}: not rolled out (the rollout stopped when "
            f"{fleet.stopped_by} failed); it keeps running its previous configuration",
        )


@operation()
def stage(plan: HostPlan, wave: int) -> Commands:
    """
    Write the new files of this wave's processes, keeping the previous ones of running
    processes for a rollback (wave 0 starts what is not running; wave r + 1 rolls replica r).

    + plan: the host's plan
    + wave: which wave

    **Example:**

    .. code:: python

        for wave in each(range(host_work(plan).waves)):
            stage(name=f"Write vLLM files (wave {wave})", plan=plan, wave=wave)
    """
    work = host_work(plan)
    mine = wave_processes(work, wave)
    if not mine:
        host.noop(f"nothing in wave {wave}")
        return
    if wave > 0 and rollout().stopped_by:
        _report_not_rolled(mine)
        host.noop("rollout stopped")
        return
    state = view(work.spec())
    desired = desired_files(work, state)
    groups: list[dict[str, Any]] = []
    written: list[str] = []
    for instance, process in mine:
        process.staged = True
        files = [
            desired[p]
            for p in LAYOUT.instance_files(instance)
            if differs(desired[p], state["paths"].get(p))
        ]
        if files:
            changed = process.status == "changed"
            backup = LAYOUT.rollback_copy(instance.unit) if changed else None
            groups.append({"files": [file_entry(f) for f in files], "backup": backup})
            written += [f.path for f in files]
    if not groups:
        host.noop("files are current")
        return
    announce(*(f"write {path}" for path in written))
    yield apply_files({"groups": groups, "daemon_reload": True})
    stale()


def failure_lines(output: list[str], unit: str) -> str:
    """What `wait_ready.py` said about `unit`'s failure (its journal was shown as it ran)."""
    said = [line.strip() for line in output if line.strip().startswith(f"{unit}: FAILED")]
    return "\n".join(said) or "it did not become ready (see the output above)"


def restart_jobs(
    work: HostWork, processes: list[tuple[VllmInstance, Process]]
) -> list[dict[str, Any]]:
    """`wait_ready.py`'s jobs: which units to (re)start and how to know they are ready."""
    jobs = []
    for instance, process in processes:
        action = None if process.status in ("ok", "loading") else "restart"
        if process.status == "ok" and instance.role != "server":
            action = None
        server = instance.role == "server"
        jobs.append(
            {
                "unit": f"{instance.unit}.service",
                "action": action,
                "enable": True,
                "url": work.health_url(instance) if server else None,
                "timeout": instance.ready_timeout_s if server else WORKER_READY_S,
            }
        )
    return jobs


def announce_jobs(jobs: list[dict[str, Any]]) -> None:
    """List, in a dry run, the units a restart job starts or waits for."""
    announce(
        *(
            f"restart {job['unit']}" if job["action"] else f"wait until {job['url']} answers"
            for job in jobs
        )
    )


def _restart(plan: HostPlan, wave: int, servers: bool) -> Commands:
    work = host_work(plan)
    fleet = rollout()
    mine = [
        (i, p)
        for i, p in wave_processes(work, wave)
        if p.staged and (i.role == "server") == servers
    ]
    if not mine:
        host.noop(f"no {'servers' if servers else 'workers'} to start in wave {wave}")
        return
    jobs = restart_jobs(work, mine)
    if all(job["action"] is None for job in jobs) and not servers:
        host.noop("workers are running")
        return
    announce_jobs(jobs)
    output: list[str] = []
    command = python_command("wait_ready")
    if wave == 0:
        yield streamed(command, stdin=stdin_json({"jobs": jobs}), sink=output)
        return
    outcome: dict[str, bool] = {}
    yield streamed(command, stdin=stdin_json({"jobs": jobs}), sink=output, outcome=outcome)
    if not outcome.get("ok"):
        for instance, _process in mine:
            replica = fleet.replica_of(instance.serve, instance.replica)
            replica.failed = failure_lines(output, f"{instance.unit}.service")
            fleet.stopped_by = fleet.stopped_by or replica.name
    stale()


@operation()
def start_workers(plan: HostPlan, wave: int) -> Commands:
    """
    (Re)start this wave's headless worker processes: a replica's workers run before its head.

    + plan: the host's plan
    + wave: which wave

    **Example:**

    .. code:: python

        start_workers(name=f"Start vLLM workers (wave {wave})", plan=plan, wave=wave)
    """
    yield from _restart(plan, wave, servers=False)


@operation()
def start_servers(plan: HostPlan, wave: int) -> Commands:
    """
    (Re)start this wave's API servers and wait for `/health` (bounded by the model's size); in a
    rolling wave a failure is recorded for the rollback instead of stopping the host here.

    + plan: the host's plan
    + wave: which wave

    **Example:**

    .. code:: python

        start_servers(name=f"Start vLLM servers (wave {wave})", plan=plan, wave=wave)
    """
    yield from _restart(plan, wave, servers=True)
