"""What AWS holds, as servekit sees it: plain records made from the replies of EC2's describe
calls (no boto3 here: aws.py makes the calls, these functions read the replies)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from servekit.cloudstate.store import ResourceType

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import (
        AddressTypeDef,
        CapacityReservationTypeDef,
        ImageTypeDef,
        InstanceTypeDef,
        InstanceTypeInfoTypeDef,
        KeyPairInfoTypeDef,
        PlacementGroupTypeDef,
        SecurityGroupTypeDef,
    )


@dataclass(frozen=True)
class TypeInfo:
    """What `describe_instance_types` says about an instance type that matters for launching."""

    name: str
    vcpus: int
    architecture: str
    network_cards: int
    max_efa: int

    @property
    def efa_interfaces(self) -> int:
        """One EFA per network card, as many as the type allows (p4d/p4de: 4)."""
        return min(self.max_efa, self.network_cards)


@dataclass(frozen=True)
class Image:
    id: str
    name: str
    root_device_name: str
    snapshot_gib: int
    source: str


@dataclass(frozen=True)
class CapacityReservation:
    id: str
    instance_type: str
    zone: str
    state: str
    available: int
    capacity_block: bool


@dataclass(frozen=True)
class Found:
    """A resource AWS holds, as servekit sees it: its tags name the group or node it is."""

    type: ResourceType
    id: str
    region: str
    tags: dict[str, str]
    status: str = "available"
    attributes: dict[str, Any] = field(default_factory=dict)


def tags_of(items: Iterable[Any] | None) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in items or []}


def type_info(name: str, info: InstanceTypeInfoTypeDef) -> TypeInfo:
    network = info.get("NetworkInfo", {})
    architectures = info.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"])
    return TypeInfo(
        name=name,
        vcpus=info.get("VCpuInfo", {}).get("DefaultVCpus", 0),
        architecture="arm64" if "arm64" in architectures else "x86_64",
        network_cards=network.get("MaximumNetworkCards", 1),
        max_efa=network.get("EfaInfo", {}).get("MaximumEfaInterfaces", 0)
        if network.get("EfaSupported")
        else 0,
    )


def image_of(ami: str, image: ImageTypeDef, source: str) -> Image:
    root = image.get("RootDeviceName", "/dev/sda1")
    sizes = [
        m.get("Ebs", {}).get("VolumeSize", 0)
        for m in image.get("BlockDeviceMappings", [])
        if m.get("DeviceName") == root
    ]
    return Image(ami, image.get("Name", ""), root, max(sizes or [0]), source)


def reservation_of(reservation: str, found: CapacityReservationTypeDef) -> CapacityReservation:
    return CapacityReservation(
        id=reservation,
        instance_type=found.get("InstanceType", ""),
        zone=found.get("AvailabilityZone", ""),
        state=found.get("State", ""),
        available=found.get("AvailableInstanceCount", 0),
        capacity_block=found.get("ReservationType") == "capacity-block",
    )


def instance_found(region: str, instance: InstanceTypeDef) -> Found:
    interfaces = instance.get("NetworkInterfaces", [])
    primary = next(
        (
            n
            for n in interfaces
            if n.get("Attachment", {}).get("DeviceIndex") == 0
            and n.get("Attachment", {}).get("NetworkCardIndex", 0) == 0
        ),
        None,
    )
    return Found(
        type="aws_instance",
        id=instance["InstanceId"],
        region=region,
        tags=tags_of(instance.get("Tags")),
        status=instance.get("State", {}).get("Name", "unknown"),
        attributes={
            "instance_type": instance.get("InstanceType"),
            "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
            "subnet_id": instance.get("SubnetId"),
            "public_ip": instance.get("PublicIpAddress"),
            "private_ip": instance.get("PrivateIpAddress"),
            "primary_interface": primary.get("NetworkInterfaceId") if primary else None,
            "spot": instance.get("InstanceLifecycle") == "spot",
            "ami": instance.get("ImageId"),
            "key_name": instance.get("KeyName"),
        },
    )


def security_group_found(region: str, group: SecurityGroupTypeDef) -> Found:
    rules = [
        p
        for p in group.get("IpPermissions", [])
        if p.get("IpProtocol") == "tcp" and p.get("FromPort") == 22
    ]
    ssh = [r["CidrIp"] for p in rules for r in p.get("IpRanges", [])]
    ssh += [r["CidrIpv6"] for p in rules for r in p.get("Ipv6Ranges", [])]
    return Found(
        type="aws_security_group",
        id=group["GroupId"],
        region=region,
        tags=tags_of(group.get("Tags")),
        attributes={
            "group_name": group.get("GroupName"),
            "vpc_id": group.get("VpcId"),
            "ssh_cidrs": sorted(ssh),
        },
    )


def key_pair_found(region: str, pair: KeyPairInfoTypeDef) -> Found:
    return Found(
        type="aws_key_pair",
        id=pair.get("KeyName", ""),
        region=region,
        tags=tags_of(pair.get("Tags")),
        attributes={"key_pair_id": pair.get("KeyPairId")},
    )


def placement_group_found(region: str, group: PlacementGroupTypeDef) -> Found:
    return Found(
        type="aws_placement_group",
        id=group.get("GroupName", ""),
        region=region,
        tags=tags_of(group.get("Tags")),
        status=group.get("State", "available"),
        attributes={"strategy": group.get("Strategy")},
    )


def address_found(region: str, address: AddressTypeDef) -> Found:
    return Found(
        type="aws_eip",
        id=address.get("AllocationId", ""),
        region=region,
        tags=tags_of(address.get("Tags")),
        attributes={
            "public_ip": address.get("PublicIp"),
            "association_id": address.get("AssociationId"),
            "network_interface_id": address.get("NetworkInterfaceId"),
        },
    )
