"""A node group's launch, resolved in AWS at plan time: its VPC and subnets, the candidates
(instance type × zone, in failover order), the AMI and the root volume."""

from __future__ import annotations

from servekit import catalog
from servekit.cloud.aws import AwsProvider
from servekit.cloud.desired import GroupIntent
from servekit.cloud.errors import CloudError
from servekit.cloud.found import Image
from servekit.cloud.plan import Candidate, GroupLaunch, TypeLaunch
from servekit.spec import AwsNodeGroup


def launch_spec(intent: GroupIntent, provider: AwsProvider, notes: list[str]) -> GroupLaunch:
    """Resolve, in AWS, everything a launch of this group needs, in failover order."""
    group = intent.group
    types = {t: provider.instance_type(t) for t in intent.instance_types}
    if group.subnet_ids:
        vpc, subnet_of_zone = provider.subnets(group.subnet_ids)
    else:
        vpc, subnet_of_zone = provider.default_subnets()
    candidates = _candidates(intent, provider, subnet_of_zone, notes)
    image = provider.dlami(types[group.instance_type].architecture)
    root = _root_volume_gib(intent, image, notes)
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


def _candidates(
    intent: GroupIntent, provider: AwsProvider, subnet_of_zone: dict[str, str], notes: list[str]
) -> list[Candidate]:
    """Each instance type (the declared one, then the fallbacks) in each usable zone, in order;
    a capacity reservation pins its type and zone."""
    group = intent.group
    zone_names = provider.zone_names()
    declared = [zone_names.get(z, z) for z in group.availability_zones]
    wanted = declared or sorted(subnet_of_zone)
    order = intent.instance_types
    if group.capacity_reservation_id:
        wanted, order = [_reserved_zone(group, provider)], [group.instance_type]
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
    return candidates


def _reserved_zone(group: AwsNodeGroup, provider: AwsProvider) -> str:
    """The zone of the group's capacity reservation, once it is checked to fit the group."""
    assert group.capacity_reservation_id is not None
    reservation = provider.capacity_reservation(group.capacity_reservation_id)
    if reservation.instance_type != group.instance_type:
        raise CloudError(
            f"capacity reservation {reservation.id} holds {reservation.instance_type}, "
            f"not {group.instance_type}"
        )
    if reservation.state not in ("active", "scheduled"):
        raise CloudError(f"capacity reservation {reservation.id} is {reservation.state}")
    if group.capacity_block != reservation.capacity_block:
        kind = "a Capacity Block" if reservation.capacity_block else "not a Capacity Block"
        raise CloudError(
            f"capacity reservation {reservation.id} is {kind}: set capacity_block accordingly"
        )
    return reservation.zone


def _root_volume_gib(intent: GroupIntent, image: Image, notes: list[str]) -> int:
    """The root volume: at least the AMI's snapshot; a note when below what the node needs."""
    root = intent.root_volume_gib(image.snapshot_gib)
    if root < image.snapshot_gib:
        raise CloudError(
            f"{intent.group.name}: root_volume_gib={root} is smaller than the AMI's "
            f"{image.snapshot_gib} GiB snapshot"
        )
    if root < (needed := intent.needed_root_gib(image.snapshot_gib)):
        name = intent.group.name
        notes.append(f"{name}: root_volume_gib={root} is below the {needed} GiB needed")
    return root
