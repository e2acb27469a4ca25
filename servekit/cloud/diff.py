"""Diff: what AWS holds for a fleet (refresh.py), compared with its state and its inventory.

Everything servekit creates is tagged with the fleet and the state's lineage, so the refresh finds
it by tag, and each resource is:

- recorded and present: kept, updated (`~`) or replaced (`-/+`) when the inventory changed;
- recorded but gone from AWS: created again (`+`), and the stale record dropped;
- tagged with this state's lineage but not recorded: an apply of this state was interrupted
  between creating it and writing the state, so the plan adopts it (`<=`) instead of creating
  another;
- tagged for the fleet with another lineage (or none): an orphan, reported and left alone.
"""

from __future__ import annotations

from collections.abc import Callable

from servekit import catalog
from servekit.cloud.desired import GroupIntent, Tag
from servekit.cloud.found import Found
from servekit.cloud.launch_spec import launch_spec
from servekit.cloud.plan import Action, Change, GroupLaunch, Plan
from servekit.cloud.refresh import (
    GROUP_LEVEL,
    RESOURCE_TYPES,
    Observed,
    ProviderFor,
    found_name,
    observe,
    regions_of,
)
from servekit.cloudstate.store import Resource, ResourceType, State

# Diff ---------------------------------------------------------------------------------------

Check = Callable[[Resource, Found], tuple[Action, str] | None]


def _key_check(launch: GroupLaunch) -> Check:
    """A key pair made from another public key is replaced."""

    def key_check(record: Resource, _live: Found) -> tuple[Action, str] | None:
        if record.attributes.get("public_key_sha256") != launch.public_key_sha256:
            return "replace", "the public key changed"
        return None

    return key_check


def _rules_check(launch: GroupLaunch) -> Check:
    """A security group letting SSH in from other networks is updated."""

    def rules_check(_record: Resource, live: Found) -> tuple[Action, str] | None:
        if live.attributes.get("ssh_cidrs") != launch.ssh_cidrs:
            was = ", ".join(live.attributes.get("ssh_cidrs") or []) or "nobody"
            return "update", f"SSH from {', '.join(launch.ssh_cidrs)} (was {was})"
        return None

    return rules_check


def _instance_check(launch: GroupLaunch) -> Check:
    """An instance of an undeclared type, market or key is replaced; a stopped one, or one that
    never answered SSH, is updated."""

    def instance_check(record: Resource, live: Found) -> tuple[Action, str] | None:
        attributes = record.attributes
        if live.attributes.get("instance_type") not in launch.instance_types:
            return "replace", f"{live.attributes.get('instance_type')} is no longer declared"
        if bool(attributes.get("spot")) != launch.spot:
            return "replace", "spot" if launch.spot else "on-demand"
        if attributes.get("public_key_sha256") != launch.public_key_sha256:
            return "replace", "it booted with another SSH key"
        if live.status in ("stopped", "stopping"):
            return "update", f"start it (it is {live.status})"
        if attributes.get("ssh_ready") is False:
            return "update", "wait for SSH (it did not answer yet)"
        return None

    return instance_check


class _Differ:
    def __init__(self, fleet: str, state: State | None, observed: Observed) -> None:
        self.fleet = fleet
        self.state = state
        self.observed = observed
        self.adoptable = observed.adoptable()
        self.adopted: set[str] = set()
        self.changes: list[Change] = []

    def recorded(self, type_: ResourceType, name: str) -> Resource | None:
        return self.state.find(type_, name) if self.state else None

    def decide(
        self,
        type_: ResourceType,
        name: str,
        group: str,
        region: str,
        detail: str,
        check: Check | None = None,
    ) -> None:
        """Keep, update, replace, adopt or create one desired resource."""
        record = self.recorded(type_, name)
        live = self.observed.live(record) if record else None
        if record and live and record.region == region:
            verdict = check(record, live) if check else None
            if verdict:
                action, why = verdict
                self.add(action, type_, name, group, region, record.id, why)
            return
        if record and live:
            self.add("replace", type_, name, group, region, record.id, f"moves to {region}")
            return
        if record:
            detail = f"{detail} ({record.id} is gone from AWS)"
        elif (found := self.adoptable.get((type_, name))) is not None:
            self.adopted.add(found.id)
            self.changes.append(
                Change(
                    action="adopt",
                    type=type_,
                    name=name,
                    group=group,
                    region=found.region,
                    id=found.id,
                    detail=f"{found.id}, created by an interrupted apply of this state",
                    attributes=found.attributes,
                )
            )
            return
        self.add("create", type_, name, group, region, None, detail)

    def add(
        self,
        action: Action,
        type_: ResourceType,
        name: str,
        group: str,
        region: str,
        id_: str | None,
        detail: str,
    ) -> None:
        self.changes.append(
            Change(
                action=action,
                type=type_,
                name=name,
                group=group,
                region=region,
                id=id_,
                detail=detail,
            )
        )

    def group(self, intent: GroupIntent, launch: GroupLaunch) -> None:
        """The changes for one declared node group: its group-level resources, then its nodes."""
        name, region = intent.group.name, intent.group.region
        self.decide(
            "aws_key_pair",
            name,
            name,
            region,
            f"{launch.resource_name} from {intent.group.ssh_key}.pub",
            _key_check(launch),
        )
        self.decide(
            "aws_security_group",
            name,
            name,
            region,
            f"{launch.resource_name}: SSH from {', '.join(launch.ssh_cidrs)}; "
            "all traffic between members",
            _rules_check(launch),
        )
        if launch.placement_group or self.recorded("aws_placement_group", name):
            self.decide(
                "aws_placement_group", name, name, region, f"{launch.resource_name} (cluster)"
            )
        self.nodes(intent, launch)

    def nodes(self, intent: GroupIntent, launch: GroupLaunch) -> None:
        """Each node's instance, and its Elastic IP where its type has several interfaces."""
        name, region = intent.group.name, intent.group.region
        primary = launch.instance_types[0]
        for node in intent.nodes:
            self.decide(
                "aws_instance",
                node,
                name,
                region,
                f"{primary}, first try {launch.candidates[0].zone}",
                _instance_check(launch),
            )
            record = self.recorded("aws_instance", node)
            launched = record.attributes.get("instance_type", primary) if record else primary
            kind = launched if launched in launch.types else primary
            if launch.types[kind].needs_elastic_ip:
                self.decide("aws_eip", node, name, region, "for the node's public address")

    def destroy_undeclared(self, intents: list[GroupIntent]) -> None:
        declared = {i.group.name: i for i in intents}
        for record in reversed(self.state.resources if self.state else []):
            intent = declared.get(str(record.attributes.get("group", record.name)))
            if intent and (record.type in GROUP_LEVEL or record.name in intent.nodes):
                continue
            self.destroy(record, "no longer declared")

    def destroy(self, record: Resource, why: str = "") -> None:
        if self.observed.live(record) is None:
            detail = f"{record.id} (already gone from AWS)"
        else:
            detail = f"{record.id}, {why}" if why else record.id
        group = str(record.attributes.get("group", record.name))
        self.add("destroy", record.type, record.name, group, record.region, record.id, detail)

    def destroy_adoptable(self) -> None:
        for found in self.adoptable.values():
            if found.id in self.adopted:
                continue
            self.adopted.add(found.id)
            group = found.tags.get(Tag.GROUP, "")
            self.add(
                "destroy",
                found.type,
                found_name(found),
                group,
                found.region,
                found.id,
                f"{found.id}, created by an interrupted apply of this state",
            )


def _order(changes: list[Change]) -> list[Change]:
    """Creates in dependency order (keys, groups, then instances and addresses); destroys last,
    in reverse."""
    rank = {t: i for i, t in enumerate(RESOURCE_TYPES)}
    building = [c for c in changes if c.action != "destroy"]
    destroying = [c for c in changes if c.action == "destroy"]
    building.sort(key=lambda c: (c.group, rank[c.type]))
    destroying.sort(key=lambda c: -rank[c.type])
    return building + destroying


def _cost(
    intents: list[GroupIntent], launches: list[GroupLaunch], state: State | None
) -> tuple[float | None, str]:
    if not intents:
        return None, ""
    total = 0.0
    spot = False
    for intent, launch in zip(intents, launches, strict=True):
        spot = spot or launch.spot
        for node in intent.nodes:
            record = state.find("aws_instance", node) if state else None
            kind = str(record.attributes.get("instance_type")) if record else ""
            if kind not in intent.instance_types:  # not launched yet, or to be replaced
                kind = intent.instance_types[0]
            price = catalog.instance_type(kind).price_usd_hour
            if price is None:
                return None, f"no list price for {kind} in the catalog"
            total += price
    dates = sorted(
        {d for i in intents for t in i.instance_types if (d := catalog.instance_type(t).price_date)}
    )
    note = "on-demand list price" + (f" of {', '.join(dates)}" if dates else "")
    if spot:
        note += "; spot is billed at the lower, varying spot price"
    return total, note


def make_plan(
    fleet: str,
    intents: list[GroupIntent],
    state: State | None,
    provider_for: ProviderFor,
    mode: str = "apply",
) -> Plan:
    """Refresh, then the changes that make AWS match the inventory (or remove the fleet)."""
    regions = regions_of((i.group.region for i in intents), state)
    observed = observe(fleet, state, regions, provider_for)
    differ = _Differ(fleet, state, observed)
    notes: list[str] = []
    launches: list[GroupLaunch] = []
    if mode == "destroy":
        for record in reversed(state.resources if state else []):
            differ.destroy(record)
        differ.destroy_adoptable()
    else:
        for intent in intents:
            launch = launch_spec(intent, provider_for(intent.group.region), notes)
            launches.append(launch)
            differ.group(intent, launch)
        differ.destroy_undeclared(intents)
        differ.destroy_adoptable()
    cost, cost_note = _cost(intents, launches, state) if mode == "apply" else (None, "")
    return Plan(
        mode="destroy" if mode == "destroy" else "apply",
        fleet=fleet,
        lineage=state.lineage if state else None,
        serial=state.serial if state else None,
        groups=launches,
        changes=_order(differ.changes),
        orphans=observed.orphans(differ.adopted),
        notes=notes,
        cost_usd_hour=cost,
        cost_note=cost_note,
    )
