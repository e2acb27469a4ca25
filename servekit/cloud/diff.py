"""Refresh and diff: what AWS holds for a fleet, compared with its state and its inventory.

Refresh never writes the state (Terraform's `-refresh-only` lesson, cloud.md §6: a failed lookup
must not drop resources). Everything servekit creates is tagged with the fleet and the state's
lineage, so the refresh finds it by tag:

- recorded and present: kept, updated (`~`) or replaced (`-/+`) when the inventory changed;
- recorded but gone from AWS: created again (`+`), and the stale record dropped;
- tagged with this state's lineage but not recorded: an apply of this state was interrupted
  between creating it and writing the state, so the plan adopts it (`<=`) instead of creating
  another;
- tagged for the fleet with another lineage (or none): an orphan, reported and left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import get_args

from servekit import catalog
from servekit.cloud.aws import AwsProvider, Found
from servekit.cloud.desired import GroupIntent, Tag
from servekit.cloud.errors import CloudError
from servekit.cloud.plan import Action, Candidate, Change, GroupLaunch, Orphan, Plan, TypeLaunch
from servekit.cloudstate.store import Resource, ResourceType, State

ProviderFor = Callable[[str], AwsProvider]
RESOURCE_TYPES: tuple[ResourceType, ...] = get_args(ResourceType)  # in dependency order
GONE_STATUSES = ("shutting-down", "terminated")
GROUP_LEVEL: tuple[ResourceType, ...] = (
    "aws_key_pair",
    "aws_security_group",
    "aws_placement_group",
)


def found_name(found: Found) -> str:
    """The group (key, security and placement group) or node (instance, EIP) it belongs to."""
    if found.type in GROUP_LEVEL:
        return found.tags.get(Tag.GROUP, found.id)
    return found.tags.get(Tag.NODE, found.id)


@dataclass
class Observed:
    """What AWS holds for the fleet: found by tag, and the state's resources by id."""

    found: dict[tuple[ResourceType, str], Found]
    lineage: str | None
    recorded: set[tuple[ResourceType, str]]

    def live(self, resource: Resource) -> Found | None:
        found = self.found.get((resource.type, resource.id))
        return None if found is None or found.status in GONE_STATUSES else found

    def unrecorded(self) -> list[Found]:
        return [
            f
            for key, f in self.found.items()
            if key not in self.recorded and f.status not in GONE_STATUSES
        ]

    def adoptable(self) -> dict[tuple[ResourceType, str], Found]:
        """Unrecorded resources an interrupted apply of this state made (one per name)."""
        adoptable: dict[tuple[ResourceType, str], Found] = {}
        if self.lineage is None:
            return adoptable
        for found in self.unrecorded():
            if found.tags.get(Tag.LINEAGE) == self.lineage:
                adoptable.setdefault((found.type, found_name(found)), found)
        return adoptable

    def orphans(self, adopted: set[str]) -> list[Orphan]:
        return [
            Orphan(
                type=f.type,
                id=f.id,
                region=f.region,
                name=found_name(f),
                lineage=f.tags.get(Tag.LINEAGE),
                status=f.status,
            )
            for f in self.unrecorded()
            if f.id not in adopted
        ]


def regions_of(declared: Iterable[str], state: State | None) -> list[str]:
    """The declared regions, then those the state still has resources in."""
    regions = [*declared, *(r.region for r in state.resources)] if state else [*declared]
    return list(dict.fromkeys(regions))


def observe(
    fleet: str, state: State | None, regions: list[str], provider_for: ProviderFor
) -> Observed:
    found: dict[tuple[ResourceType, str], Found] = {}
    for region in regions:
        for resource in provider_for(region).find(Tag.FLEET, fleet):
            found[(resource.type, resource.id)] = resource
    resources = state.resources if state else []
    for region in regions:
        for type_ in RESOURCE_TYPES:
            missing = [
                r.id
                for r in resources
                if r.type == type_ and r.region == region and (type_, r.id) not in found
            ]
            for resource in provider_for(region).lookup(type_, missing):
                found[(resource.type, resource.id)] = resource
    return Observed(
        found=found,
        lineage=state.lineage if state else None,
        recorded={(r.type, r.id) for r in resources},
    )


# Launch specification -----------------------------------------------------------------------


def launch_spec(intent: GroupIntent, provider: AwsProvider, notes: list[str]) -> GroupLaunch:
    """Resolve, in AWS, everything a launch of this group needs, in failover order."""
    group = intent.group
    types = {t: provider.instance_type(t) for t in intent.instance_types}
    if group.subnet_ids:
        vpc, subnet_of_zone = provider.subnets(group.subnet_ids)
    else:
        vpc, subnet_of_zone = provider.default_subnets()
    zone_names = provider.zone_names()
    declared = [zone_names.get(z, z) for z in group.availability_zones]
    wanted = declared or sorted(subnet_of_zone)
    order = intent.instance_types
    if group.capacity_reservation_id:
        reservation = provider.capacity_reservation(group.capacity_reservation_id)
        if reservation.instance_type != group.instance_type:
            raise CloudError(
                f"capacity reservation {reservation.id} holds {reservation.instance_type}, "
                f"not {group.instance_type}"
            )
        if reservation.state not in ("active", "scheduled"):
            raise CloudError(f"capacity reservation {reservation.id} is {reservation.state}")
        wanted, order = [reservation.zone], [group.instance_type]
        if group.capacity_block != reservation.capacity_block:
            kind = "a Capacity Block" if reservation.capacity_block else "not a Capacity Block"
            raise CloudError(
                f"capacity reservation {reservation.id} is {kind}: set capacity_block accordingly"
            )
    candidates: list[Candidate] = []
    for instance_type in order:
        offered = set(provider.zones_offering(instance_type))
        skipped = [z for z in wanted if z not in offered or z not in subnet_of_zone]
        if skipped and declared:
            notes.append(f"{group.name}: {instance_type} is not offered in {', '.join(skipped)}")
        candidates += [
            Candidate(instance_type=instance_type, zone=z, subnet_id=subnet_of_zone[z])
            for z in wanted
            if z not in skipped
        ]
    if not candidates:
        raise CloudError(
            f"{group.name}: no zone of {group.region} offers {', '.join(order)}"
            + (f" among {', '.join(wanted)}" if declared else "")
        )
    image = provider.dlami(types[group.instance_type].architecture)
    root = intent.root_volume_gib(image.snapshot_gib)
    if root < image.snapshot_gib:
        raise CloudError(
            f"{group.name}: root_volume_gib={root} is smaller than the AMI's "
            f"{image.snapshot_gib} GiB snapshot"
        )
    if root < (needed := intent.needed_root_gib(image.snapshot_gib)):
        notes.append(f"{group.name}: root_volume_gib={root} is below the {needed} GiB needed")
    return GroupLaunch(
        group=group.name,
        region=group.region,
        nodes=intent.nodes,
        resource_name=intent.resource_name,
        vpc_id=vpc,
        candidates=candidates,
        types={
            name: TypeLaunch(
                vcpus=info.vcpus,
                efa_interfaces=info.efa_interfaces,
                price_usd_hour=catalog.instance_type(name).price_usd_hour,
            )
            for name, info in types.items()
        },
        ami_id=image.id,
        ami_name=image.name,
        ami_source=image.source,
        root_device_name=image.root_device_name,
        root_volume_gib=root,
        root_volume_formula=intent.root_volume_formula(image.snapshot_gib),
        placement_group=intent.wants_placement_group,
        spot=group.spot,
        capacity_reservation_id=group.capacity_reservation_id,
        capacity_block=group.capacity_block,
        ssh_user=group.ssh_user,
        ssh_key=str(group.ssh_key.expanduser()),
        public_key=intent.public_key,
        public_key_sha256=intent.public_key_sha256,
        ssh_cidrs=intent.ssh_cidrs,
    )


# Diff ---------------------------------------------------------------------------------------

Check = Callable[[Resource, Found], tuple[Action, str] | None]


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
        name, region = intent.group.name, intent.group.region

        def key_check(record: Resource, _live: Found) -> tuple[Action, str] | None:
            if record.attributes.get("public_key_sha256") != launch.public_key_sha256:
                return "replace", "the public key changed"
            return None

        def rules_check(_record: Resource, live: Found) -> tuple[Action, str] | None:
            if live.attributes.get("ssh_cidrs") != launch.ssh_cidrs:
                was = ", ".join(live.attributes.get("ssh_cidrs") or []) or "nobody"
                return "update", f"SSH from {', '.join(launch.ssh_cidrs)} (was {was})"
            return None

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

        self.decide(
            "aws_key_pair",
            name,
            name,
            region,
            f"{launch.resource_name} from {intent.group.ssh_key}.pub",
            key_check,
        )
        self.decide(
            "aws_security_group",
            name,
            name,
            region,
            f"{launch.resource_name}: SSH from {', '.join(launch.ssh_cidrs)}; "
            "all traffic between members",
            rules_check,
        )
        if launch.placement_group or self.recorded("aws_placement_group", name):
            self.decide(
                "aws_placement_group", name, name, region, f"{launch.resource_name} (cluster)"
            )
        primary = launch.instance_types[0]
        for node in intent.nodes:
            self.decide(
                "aws_instance",
                node,
                name,
                region,
                f"{primary}, first try {launch.candidates[0].zone}",
                instance_check,
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
