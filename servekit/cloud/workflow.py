"""The steps behind `servekit cloud plan | apply | destroy`, shared by the CLI and the tests."""

from __future__ import annotations

from pathlib import Path

from servekit.cloud.apply import Applier, Echo, ReadyCheck
from servekit.cloud.desired import GroupIntent, fleet_intents
from servekit.cloud.diff import make_plan
from servekit.cloud.plan import Plan
from servekit.cloud.refresh import ProviderFor, regions_of
from servekit.cloud.timeouts import Timeouts
from servekit.cloudstate.store import StateError, StateStore, StateWriter
from servekit.inventory import load_fleet
from servekit.spec import Fleet


def load(inventory: Path) -> tuple[Fleet, list[GroupIntent]]:
    """The inventory's fleet and its AWS node groups (offline; FleetError if it cannot work)."""
    fleet = load_fleet(inventory)
    return fleet, fleet_intents(fleet)


def refresh_and_plan(
    fleet: str,
    intents: list[GroupIntent],
    store: StateStore,
    provider_for: ProviderFor,
    mode: str = "apply",
) -> Plan:
    """Ask AWS (credentials first, so their absence is the first thing said) and diff."""
    state = store.load()
    regions = regions_of((i.group.region for i in intents), state)
    if regions:
        provider_for(regions[0]).check_credentials()
    return make_plan(fleet, intents, state, provider_for, mode)


def execute(
    plan: Plan,
    store: StateStore,
    provider_for: ProviderFor,
    ready: ReadyCheck | None,
    timeouts: Timeouts,
    echo: Echo,
) -> None:
    """Apply `plan` to the state it was made from (the caller holds the lock)."""
    state = store.load()
    lineage, serial = (state.lineage, state.serial) if state else (None, None)
    if (plan.lineage, plan.serial) != (lineage, serial):
        raise StateError(
            f"the plan was made from state serial {plan.serial} (lineage {plan.lineage}); the "
            f"state is now serial {serial} (lineage {lineage}): make a new plan"
        )
    if plan.fleet != store.fleet:
        raise StateError(f"the plan is for fleet {plan.fleet!r}, not {store.fleet!r}")
    writer = StateWriter(store, state or store.load_or_create())
    Applier(plan, writer, provider_for, ready, timeouts, echo).run()
