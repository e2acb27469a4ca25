"""A deploy's plan when the host carries no servekit data: read from a fleet file instead.

`pyinfra @local deploys/ollama.py` has no inventory made by servekit, so no `servekit` host data.
The plan then comes from a fleet file named by `--data servekit_fleet=PATH`, else by
`$SERVEKIT_FLEET`, else the deploy's default (`inventories/laptop.py` for Ollama). `@local` takes
the plan of the fleet's `LocalHost`, any other host the machine of its name. Each answer says where
it came from, so the deploy can tell the user.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyinfra.connectors.local import LocalConnector
from pyinfra.context import host

from servekit.deploys.common import host_plan
from servekit.errors import FleetError, Problem
from servekit.hostplan import HostPlan
from servekit.inventory import load_fleet_and_plan
from servekit.placement import FleetPlan
from servekit.spec import Fleet, LocalHost

FLEET_DATA_KEY = "servekit_fleet"
FLEET_ENV = "SERVEKIT_FLEET"


def pick_host_plan(fleet: Fleet, plan: FleetPlan, host_name: str, local: bool) -> HostPlan:
    """The plan a host gets from a fleet file: `@local` is the fleet's LocalHost, any other host
    the machine of its name."""
    if local:
        machines = [m for m in fleet.machines if isinstance(m, LocalHost)]
        if not machines:
            raise FleetError(
                [
                    Problem(
                        "machines",
                        "this is @local, and the fleet declares no LocalHost",
                        "add LocalHost(...) to the fleet's machines, or name the fleet file of "
                        "this machine",
                    )
                ],
                fleet=fleet.name,
            )
        return plan.hosts[machines[0].name]
    if host_name in plan.hosts:
        return plan.hosts[host_name]
    raise FleetError(
        [
            Problem(
                "machines",
                f"no machine is named {host_name!r}",
                f"use one of {', '.join(plan.hosts)}, or an inventory made with pyinfra_groups",
            )
        ],
        fleet=fleet.name,
    )


def named_fleet_file(default_fleet: str | None) -> tuple[str, str]:
    """The fleet file to read and how it was named (`--data`, the environment, the default)."""
    if host.data.get(FLEET_DATA_KEY):
        return str(host.data.get(FLEET_DATA_KEY)), f"--data {FLEET_DATA_KEY}"
    if os.environ.get(FLEET_ENV):
        return os.environ[FLEET_ENV], f"${FLEET_ENV}"
    if default_fleet:
        return default_fleet, "the deploy's default fleet file"
    raise FleetError(
        [
            Problem(
                FLEET_DATA_KEY,
                "this host has no servekit data and no fleet file is named",
                f"run with an inventory made by pyinfra_groups, or --data {FLEET_DATA_KEY}="
                f"inventories/laptop.py, or set {FLEET_ENV}",
            )
        ]
    )


def find_host_plan(default_fleet: str | None) -> tuple[HostPlan, str]:
    """This host's plan and a sentence saying where it came from: the inventory's servekit host
    data, else the fleet file named for this run."""
    plan = host_plan()
    if plan is not None:
        return plan, "the inventory's servekit host data"
    path, origin = named_fleet_file(default_fleet)
    fleet, fleet_plan = load_fleet_and_plan(path)
    local = issubclass(host.connector_cls, LocalConnector)
    plan = pick_host_plan(fleet, fleet_plan, host.name, local)
    return plan, f"{path} ({origin}; fleet {fleet.name!r}, machine {plan.name!r})"


def default_fleet_file(deploy_file: str) -> str:
    """`inventories/laptop.py` beside the `deploys/` folder a deploy file sits in."""
    return str(Path(deploy_file).resolve().parent.parent / "inventories" / "laptop.py")
