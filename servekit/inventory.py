"""Turn a Fleet into pyinfra inventory groups, and load inventory files for servekit's commands.

An inventory file builds a Fleet and ends with::

    gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)

pyinfra then sees five groups whose hosts carry their HostPlan under the host-data key
`servekit` (plus the SSH settings pyinfra's connector reads). Planning happens right there, so a
fleet that cannot work stops with a FleetError before pyinfra connects anywhere.

Secrets are checked there too (servekit/secrets.py: a regular 0600 file of the user, ...), also
for `pyinfra ... --dry`. `servekit plan`, `render` and `cloud` load the same file through
`load_fleet`, which skips that check: they never read a secret (render writes placeholders), so
they keep working on a machine that does not hold the secret files.
"""

from __future__ import annotations

import contextlib
import runpy
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NamedTuple

from servekit.cloudstate.store import known_hosts_file, node_addresses, pinned_nodes
from servekit.errors import FleetError, Problem
from servekit.hostplan import HOST_DATA_KEY, HostPlan
from servekit.placement import FleetPlan, NodeAddress, plan_fleet
from servekit.secrets import fleet_secret_problems
from servekit.spec import AwsNodeGroup, Fleet, LocalHost, SshHost

HostEntry = tuple[str, dict[str, Any]]

_offline_load: ContextVar[bool] = ContextVar("servekit_offline_inventory_load", default=False)
"""True only inside `load_fleet` (servekit's own commands: no secret check, no cloud notice).

An inventory file calls `pyinfra_groups(fleet)` itself, so `load_fleet` cannot pass it an argument;
the context variable carries that one fact from `load_fleet` to the call, for the duration of the
call only (reset when the file has run, also on error; each thread and task sees its own value).
"""


@contextlib.contextmanager
def _loading_offline() -> Iterator[None]:
    token = _offline_load.set(True)
    try:
        yield
    finally:
        _offline_load.reset(token)


class Groups(NamedTuple):
    """pyinfra groups, in the order inventory files unpack them."""

    gpu: list[HostEntry]
    vllm: list[HostEntry]
    ollama: list[HostEntry]
    gateway: list[HostEntry]
    monitoring: list[HostEntry]


def cloud_addresses(fleet: Fleet) -> dict[str, NodeAddress]:
    """Addresses of the fleet's cloud nodes from its state file (none before `cloud apply`)."""
    return node_addresses(fleet.name)


def _connection_data(fleet: Fleet, plan: HostPlan, pinned: set[str]) -> tuple[str, dict[str, Any]]:
    machine = fleet.machine_of(plan.name)
    if isinstance(machine, LocalHost):
        return "@local", {"_sudo": plan.sudo}
    data: dict[str, Any] = {"_sudo": plan.sudo}
    if isinstance(machine, SshHost):
        data["ssh_port"] = machine.ssh_port
        if machine.ssh_user:
            data["ssh_user"] = machine.ssh_user
        if machine.ssh_key:
            data["ssh_key"] = str(machine.ssh_key.expanduser())
    elif isinstance(machine, AwsNodeGroup):
        data["ssh_user"] = machine.ssh_user
        data["ssh_key"] = str(machine.ssh_key.expanduser())
        if plan.name in pinned:  # only the keys `cloud apply` read from the console (state.py)
            data["ssh_known_hosts_file"] = str(known_hosts_file(fleet.name))
            data["ssh_strict_host_key_checking"] = "yes"
    if plan.address:
        data["ssh_hostname"] = plan.address
    return plan.name, data


def pyinfra_groups(fleet: Fleet) -> Groups:
    """Plan the fleet and check its secrets (FleetError listing every problem, with the line
    of the inventory that declared the fleet) and return its pyinfra groups."""
    offline = _offline_load.get()
    addresses = cloud_addresses(fleet)
    problems = [] if offline else fleet_secret_problems(fleet)
    try:
        plan = plan_fleet(fleet, addresses)
    except FleetError as error:
        raise FleetError(
            error.problems + problems, fleet=fleet.name, where=fleet.declared_at
        ) from None
    if problems:
        raise FleetError(problems, fleet=fleet.name, where=fleet.declared_at)
    pending = [h.name for h in plan.hosts.values() if h.connection == "ssh" and not h.address]
    if pending and not offline:
        print(
            f"servekit: fleet {fleet.name!r}: {', '.join(pending)} have no address yet; run "
            "`servekit cloud apply` on this inventory first (pyinfra cannot reach them before)",
            file=sys.stderr,
        )
    pinned = pinned_nodes(fleet.name)
    unpinned = [n for n in addresses if n not in pinned and n in plan.hosts]
    if unpinned and not offline:
        print(
            f"servekit: fleet {fleet.name!r}: {', '.join(sorted(unpinned))} have no pinned SSH "
            "host keys (applied with --no-wait-ssh), so pyinfra accepts the first key it sees",
            file=sys.stderr,
        )
    groups: dict[str, list[HostEntry]] = {role: [] for role in Groups._fields}
    for host in plan.hosts.values():
        name, data = _connection_data(fleet, host, pinned)
        data[HOST_DATA_KEY] = host.to_host_data()
        # a machine that serves nothing (any more) stays in the inventory, so that the deploys
        # can retire what they ran there (the Ollama deploy stops servekit's Ollama)
        for role in host.roles or ["ollama"]:
            groups[role].append((name, data))
    return Groups(**groups)


def _run_inventory(path: Path) -> dict[str, Any]:
    """An inventory file's module globals, run the way pyinfra runs it (offline: no secret is
    read, no address is required)."""
    if not path.is_file():
        raise FleetError([Problem("inventory", f"{path} does not exist", "give an inventory file")])
    try:
        with _loading_offline():
            return runpy.run_path(str(path), run_name="__servekit_inventory__")
    except FleetError:
        raise
    except Exception as error:  # the inventory is Python: its own mistakes, without a traceback
        raise FleetError([_inventory_problem(path, error)]) from None


def _is_group(value: object) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], dict)
        for e in value
    )


def inventory_groups(path: str | Path) -> dict[str, list[HostEntry]]:
    """The groups an inventory file gives pyinfra (every module-level list of `(name, data)`
    entries), with whatever host data the file set after `pyinfra_groups`."""
    module = _run_inventory(Path(path))
    return {
        name: list(value)
        for name, value in module.items()
        if not name.startswith("_") and value and _is_group(value)
    }


def load_fleet(path: str | Path) -> Fleet:
    """Run an inventory file the way pyinfra does and return the Fleet it declares."""
    path = Path(path)
    module = _run_inventory(path)
    fleets = [value for value in module.values() if isinstance(value, Fleet)]
    if len(fleets) != 1:
        raise FleetError(
            [Problem("inventory", f"{path} declares {len(fleets)} fleets", "declare exactly one")]
        )
    return fleets[0]


def _inventory_problem(path: Path, error: Exception) -> Problem:
    """An exception raised while running an inventory file, at its line in that file."""
    line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
    traceback = error.__traceback__
    while traceback is not None:
        if Path(traceback.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    where = f"{path}:{line}" if line else str(path)
    return Problem(
        "inventory",
        f"{where}: {type(error).__name__}: {error}",
        "fix that line of the inventory (it is Python: see inventories/ for examples)",
    )


def load_fleet_and_plan(path: str | Path) -> tuple[Fleet, FleetPlan]:
    """The fleet an inventory file declares and its plan (cloud addresses when applied)."""
    fleet = load_fleet(path)
    return fleet, plan_fleet(fleet, cloud_addresses(fleet))
