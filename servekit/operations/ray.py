"""Ray operations for vLLM replicas that span nodes: the Ray node units (heads before workers)
and the wait until the head's cluster lists every node."""

from __future__ import annotations

from typing import Any

from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit.hostplan import HostPlan, ray_unit
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
from servekit.operations.runstate import this_host
from servekit.operations.vllm_work import (
    WORKER_READY_S,
    desired_files,
    host_work,
    is_active,
    units_state,
)
from servekit.spec import RAY_PORT
from servekit.vllm_layout import LAYOUT

RAY_READY_S = 300
"""How long a Ray head waits for every node of its cluster."""


@operation()
def ray_nodes(plan: HostPlan, head: bool) -> Commands:
    """
    Write and (re)start this host's Ray node units (heads before workers), each until it stays
    up.

    + plan: the host's plan
    + head: the head nodes (True) or the worker nodes (False)

    **Example:**

    .. code:: python

        ray_nodes(name="Start the Ray head", plan=plan, head=True)
        ray_nodes(name="Start the Ray workers", plan=plan, head=False)
    """
    work = host_work(plan)
    state = view(work.spec())
    desired = desired_files(work, state)
    groups: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    for instance in work.ray:
        if (instance.role == "server") != head:
            continue
        unit = ray_unit(instance)
        path = LAYOUT.ray_unit_file(instance)
        changed = differs(desired[path], state["paths"].get(path))
        if changed:
            groups.append({"files": [file_entry(desired[path])], "backup": None})
        if changed or not is_active(units_state(state, unit)):
            jobs.append({"unit": f"{unit}.service", "action": "restart", "enable": True,
                         "url": None, "timeout": WORKER_READY_S})  # fmt: skip
    if not jobs:
        host.noop("Ray nodes are running")
        return
    announce(
        *(f"write {item['path']}" for group in groups for item in group["files"]),
        *(f"restart {job['unit']}" for job in jobs),
    )
    if groups:
        yield apply_files({"groups": groups, "daemon_reload": True})
    yield streamed(python_command("wait_ready"), stdin=stdin_json({"jobs": jobs}))
    this_host().ray_restarted = True
    stale()


@operation()
def ray_cluster(plan: HostPlan) -> Commands:
    """
    On a Ray head: wait until `ray status` lists every node of the replica, before vLLM starts.

    + plan: the host's plan

    **Example:**

    .. code:: python

        ray_cluster(name="Wait for the Ray cluster", plan=plan)
    """
    work = host_work(plan)
    state = view(work.spec())
    restarted = this_host().ray_restarted
    waits = [
        i
        for i in work.ray
        if i.role == "server" and (restarted or (state.get("health") or {}).get(i.unit) != 200)
    ]
    if not waits:
        host.noop("Ray clusters are complete")
        return
    announce(*(f"wait for the Ray cluster of {i.unit} ({i.nnodes} nodes)" for i in waits))
    for instance in waits:
        address = f"{instance.head_address}:{RAY_PORT}"
        yield streamed(
            python_command(
                "ray_wait",
                f"{work.venv}/bin/ray",
                address,
                str(instance.nnodes),
                str(RAY_READY_S),
                python=f"{work.venv}/bin/python",
            )
        )
