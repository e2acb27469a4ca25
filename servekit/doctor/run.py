"""Run the doctor: load the inventory as pyinfra does, connect to each host, gather every
group's checks there, then the checks across hosts.

A check group is a module (see `servekit.doctor.groups`) with

- `GROUP`: its name, the key of what it keeps in `HostFindings.facts`;
- `gather(host, plan, findings)`: reads facts with `host.get_fact(...)` and appends `Check`s;
  `plan` is the host's `HostPlan`, or None (only for groups with `PLAN_OPTIONAL = True`:
  `--local` without a fleet file runs the checks that need no declaration);
- optionally `across(plans, findings) -> list[Check]`: checks comparing hosts.

A host that cannot be reached, or a group that fails on a host, is a fail row, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pyinfra.api.config import Config
from pyinfra.api.exceptions import ConnectError, PyinfraError
from pyinfra.api.host import Host
from pyinfra.api.inventory import Inventory
from pyinfra.api.state import State
from pyinfra.context import ctx_host, ctx_state

from servekit.doctor.groups import GROUPS
from servekit.doctor.result import Check, HostFindings
from servekit.errors import FleetError, Problem
from servekit.hostplan import HOST_DATA_KEY, HostPlan

LOCAL = "@local"


@dataclass(frozen=True)
class Request:
    """What to check: an inventory file, or this machine (`--local`, with an optional fleet
    file that declares it as a LocalHost); `hosts` limits to those names."""

    inventory: Path | None = None
    local: bool = False
    fleet: Path | None = None
    hosts: tuple[str, ...] = ()
    sudo: bool = False
    """--local: run the facts with sudo (the sandboxed CUDA check needs root)."""


def local_inventory(fleet: Path | None, sudo: bool = False) -> Inventory:
    """`@local`, with the plan of the fleet file's LocalHost when a fleet file is given."""
    data: dict[str, Any] = {"_sudo": True} if sudo else {}
    if fleet is not None:
        from servekit.fleetfile import pick_host_plan
        from servekit.inventory import load_fleet_and_plan

        loaded, fleet_plan = load_fleet_and_plan(fleet)
        plan = pick_host_plan(loaded, fleet_plan, LOCAL, local=True)
        data[HOST_DATA_KEY] = plan.to_host_data()
        data["_sudo"] = sudo or plan.sudo
    return Inventory(([(LOCAL, data)], {}))  # type: ignore[no-untyped-call]


def file_inventory(path: Path) -> Inventory:
    """The hosts and groups the inventory file gives pyinfra (`pyinfra_groups`: each host's
    servekit plan and SSH settings, and what the file set after it), run as `servekit plan`
    runs it: doctor reads no secret, so the secret files need not be on this machine.
    (pyinfra's own loader, pyinfra_cli, is not used: importing it monkey-patches the whole
    process for gevent.)"""
    from servekit.inventory import inventory_groups

    groups = inventory_groups(path)
    hosts: dict[str, dict[str, Any]] = {}
    for entries in groups.values():
        for name, data in entries:
            hosts.setdefault(name, data)
    members: dict[str, tuple[list[str], dict[str, Any]]] = {
        group: ([name for name, _ in entries], {}) for group, entries in groups.items()
    }
    return Inventory((list(hosts.items()), {}), **members)  # type: ignore[no-untyped-call]


def load(request: Request) -> Inventory:
    if request.local:
        return local_inventory(request.fleet, request.sudo)
    if request.inventory is None:
        raise FleetError([Problem("inventory", "none given", "give an inventory, or --local")])
    return file_inventory(request.inventory)


def plan_of(host: Host) -> HostPlan | None:
    raw = host.data.get(HOST_DATA_KEY)
    return None if raw is None else HostPlan.from_host_data(raw)


def _group_name(group: ModuleType) -> str:
    return str(getattr(group, "GROUP", group.__name__.rsplit(".", 1)[-1]))


def gather_host(host: Host, plan: HostPlan | None, groups: Iterable[ModuleType]) -> HostFindings:
    """Every group's checks on one connected host; a group that raises becomes a fail row."""
    findings = HostFindings(host.name)
    for group in groups:
        name = _group_name(group)
        if plan is None and not getattr(group, "PLAN_OPTIONAL", False):
            why = "no fleet declaration for this host (give the inventory, or --fleet)"
            findings.checks.append(Check(host.name, f"{name} checks", "-", why, "skip"))
            continue
        try:
            group.gather(host, plan, findings)
        except Exception as error:  # a host's answer we did not foresee: report, go on
            findings.checks.append(
                Check(
                    host.name,
                    f"{name} checks",
                    "the checks run",
                    f"{type(error).__name__}: {error}",
                    "fail",
                    "run again with `pyinfra -vvv` on this host to see the command that failed",
                )
            )
    return findings


def connect(host: Host) -> Check | None:
    """Connect; a fail row (never an exception) when the host cannot be reached."""
    try:
        host.connect(show_errors=False, raise_exceptions=True)
    except (ConnectError, PyinfraError, OSError) as error:
        return Check(
            host.name,
            "connect",
            "pyinfra connects (SSH, or @local)",
            str(error) or type(error).__name__,
            "fail",
            "check the address, the SSH user and key in the inventory, and that the host is up",
        )
    if not host.connected:
        return Check(host.name, "connect", "pyinfra connects", "not connected", "fail")
    return None


def across_hosts(
    plans: Mapping[str, HostPlan],
    findings: Mapping[str, HostFindings],
    groups: Iterable[ModuleType],
) -> None:
    """Each group's checks comparing hosts, filed under the host each row names."""
    for group in groups:
        across = getattr(group, "across", None)
        if across is None:
            continue
        for check in across(plans, findings):
            findings[check.host].checks.append(check)


def run(request: Request, groups: Iterable[ModuleType] = GROUPS) -> list[HostFindings]:
    """Check every host of the request (in inventory order). The inventory file runs inside a
    pyinfra State, as `pyinfra INVENTORY ...` runs it."""
    state = State()
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # the fail row says it, once
    with ctx_state.use(state):
        inventory = load(request)
        state.init(inventory, Config())  # type: ignore[no-untyped-call]
        return _run_hosts(state, inventory, request, list(groups))


def _run_hosts(
    state: State, inventory: Inventory, request: Request, groups: list[ModuleType]
) -> list[HostFindings]:
    results: dict[str, HostFindings] = {}
    plans: dict[str, HostPlan] = {}
    gathered: set[str] = set()
    names = [h.name for h in inventory]
    for name in sorted(set(request.hosts) - set(names)):
        found = f"not in the inventory ({', '.join(names)})"
        results[name] = HostFindings(name, [Check(name, "host", "in the inventory", found, "fail")])
    for host in inventory:
        if request.hosts and host.name not in request.hosts:
            continue
        state.activate_host(host)
        plan = plan_of(host)
        if plan is not None:
            plans[host.name] = plan
        failed = connect(host)
        if failed is not None:
            results[host.name] = HostFindings(host.name, [failed])
            continue
        try:
            with ctx_host.use(host):
                results[host.name] = gather_host(host, plan, groups)
            gathered.add(host.name)
        finally:
            host.disconnect()
    reached = {name: results[name] for name in gathered if name in plans}
    across_hosts({name: plans[name] for name in reached}, reached, groups)
    return list(results.values())
