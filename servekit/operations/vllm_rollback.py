"""The end of a wave and of the rollout: a failed replica returned to its previous files (and
venv), then the venv links moved, rollback copies and old venvs removed, and the host failed
with a report if one of its replicas did not roll out."""

from __future__ import annotations

from typing import Any

from pyinfra import logger
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit import shell
from servekit.hostplan import HostPlan, VllmInstance
from servekit.operations.common import Commands, failure
from servekit.operations.hoststate import (
    announce,
    apply_files,
    python_command,
    stale,
    stdin_json,
    streamed,
    view,
)
from servekit.operations.runstate import rollout
from servekit.operations.vllm_units import failure_lines, restart_jobs, wave_processes
from servekit.operations.vllm_work import HostWork, host_work
from servekit.shell import quote as q
from servekit.vllm_layout import LAYOUT
from servekit.vllm_rollout import Process, Replica


def _is_dir(state: dict[str, Any], path: str) -> bool:
    return (state["paths"].get(path) or {}).get("type") == "dir"


@operation()
def roll_back(plan: HostPlan, wave: int) -> Commands:
    """
    Return the processes of a replica that failed in this wave to their previous venv and
    files, restart them and wait until they answer again.

    + plan: the host's plan
    + wave: which wave

    **Example:**

    .. code:: python

        roll_back(name=f"Roll back failures (wave {wave})", plan=plan, wave=wave)
    """
    work = host_work(plan)
    fleet = rollout()
    mine = [
        (i, p)
        for i, p in wave_processes(work, wave)
        if p.staged and fleet.replica_of(i.serve, i.replica).failed
    ]
    if wave == 0 or not mine:
        host.noop("nothing to roll back")
        return
    state = view(work.spec())
    copies = [LAYOUT.rollback_copy(i.unit) for i, _p in mine]
    restore = [path for path in copies if _is_dir(state, path)]
    announce(
        *(
            f"restore {path}, restart {i.unit}.service"
            for path, (i, _p) in zip(copies, mine, strict=True)
        )
    )
    yield apply_files({"restore": restore, "daemon_reload": True})
    jobs = restart_jobs(work, [(i, Process(p.host, p.unit, p.serve, p.replica, p.role,
                                           "changed")) for i, p in mine])  # fmt: skip
    outcome: dict[str, bool] = {}
    output: list[str] = []
    yield streamed(
        python_command("wait_ready"), stdin=stdin_json({"jobs": jobs}), sink=output,
        outcome=outcome,
    )  # fmt: skip
    for instance, _process in mine:
        replica = fleet.replica_of(instance.serve, instance.replica)
        replica.rolled_back = (
            "ok" if outcome.get("ok") else failure_lines(output, f"{instance.unit}.service")
        )
    stale()


def _failure_report(failed: list[tuple[VllmInstance, Replica]]) -> str:
    """Why the host fails: each replica that did not roll out, and how its rollback went."""
    lines = []
    for instance, replica in failed:
        back = (
            "rolled back to its previous venv and configuration, and answering again"
            if replica.rolled_back == "ok"
            else f"the rollback FAILED too:\n{replica.rolled_back}"
        )
        lines.append(
            f"{instance.unit} ({replica.name}): the new version or configuration did not "
            f"become healthy ({replica.failed}); {back}."
        )
    report = "\n".join(lines)
    return (
        f"servekit: {host.name}: rollout stopped.\n{report}\nFix the cause (the journal "
        "lines printed above), then run the deploy again; replicas not rolled yet keep "
        "serving their previous version"
    )


def _old_venvs(state: dict[str, Any], keep: set[str | None]) -> list[str]:
    """The complete venvs on the host, but those in `keep`."""
    suffix = f"/{LAYOUT.venv_marker}"
    venvs = [
        path.removesuffix(suffix)
        for path in (state.get("globs") or {})
        if path.startswith(f"{LAYOUT.venvs}/") and path.endswith(LAYOUT.venv_marker)
    ]
    return [v for v in venvs if v not in keep]


def _split(
    work: HostWork, state: dict[str, Any]
) -> tuple[list[tuple[VllmInstance, Replica]], list[str]]:
    """This host's replicas that failed, and the rollback copies of the others (to remove)."""
    failed, clean = [], []
    for instance in work.processes:
        replica = rollout().replicas.get((instance.serve, instance.replica))
        if replica is not None and replica.failed:
            failed.append((instance, replica))
        elif _is_dir(state, LAYOUT.rollback_copy(instance.unit)):
            clean.append(LAYOUT.rollback_copy(instance.unit))
    return failed, clean


@operation()
def finish(plan: HostPlan) -> Commands:
    """
    Point `current` at the venv the host runs (and `previous` at the one before, kept; older
    venvs are removed), forget rollback copies, and fail the host with a report if one of its
    replicas failed to roll out.

    + plan: the host's plan

    **Example:**

    .. code:: python

        finish(name="Finish the vLLM rollout", plan=plan)
    """
    work = host_work(plan)
    state = view(work.spec())
    failed, clean = _split(work, state)
    skipped = rollout().reports.get(host.name, [])
    for line in skipped:
        logger.warning(f"{host.name}: {line}")
    link = (state["paths"].get(LAYOUT.current_link) or {}).get("target")
    previous = (state["paths"].get(LAYOUT.previous_link) or {}).get("target")
    settled = not failed and not skipped
    relink = settled and link != work.venv
    if relink and link:
        previous = link
    prune = _old_venvs(state, {work.venv, previous}) if settled else []
    if not (clean or relink or failed or prune):
        host.noop("rollout complete")
        return
    announce(
        *(f"remove {path}" for path in clean),
        *([f"point {LAYOUT.current_link} at {work.venv}"] if relink else []),
        *(f"remove the old venv {venv}" for venv in prune),
    )
    if clean:
        yield apply_files({"remove": clean})
    if relink:
        if link:
            yield shell.join(["ln", "-sfn", link, LAYOUT.previous_link])
        yield shell.join(["ln", "-sfn", work.venv, LAYOUT.current_link])
    if prune:
        # every unit runs `current` now; `previous` stays for a manual way back
        yield "rm -rf " + " ".join(q(v) for v in prune)
    stale()
    if failed:
        yield failure(_failure_report(failed))
