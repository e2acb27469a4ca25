"""The provider seam: every AWS call `servekit cloud` makes, for one region, over boto3.

Clients come from the standard AWS configuration (credential chain, `AWS_PROFILE`,
`AWS_ENDPOINT_URL`), through `new_session()`. Two EC2 clients, as shared/reference/cloud.md §4
advises: a general one with adaptive retries, and a launch client that never retries by itself,
because botocore would otherwise resend `RunInstances` on `InsufficientInstanceCapacity` (an
HTTP 500) instead of letting the launch loop move to the next zone.

Placement groups, capacity reservations and the Deep Learning AMI's public SSM parameter are
plain calls here, although moto (the test double) lacks them: the tests add what moto lacks to
the moto server they start, so this module runs unchanged against both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

from servekit.cloud.errors import CloudError, NoCredentials, error_code, error_message
from servekit.cloudstate.store import ResourceType

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.literals import InstanceTypeType, ResourceTypeType
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
        InstanceTypeDef,
        IpPermissionTypeDef,
        IpRangeTypeDef,
        Ipv6RangeTypeDef,
        RunInstancesRequestTypeDef,
        TagSpecificationTypeDef,
    )
    from mypy_boto3_ec2.waiter import (
        InstanceRunningWaiter,
        InstanceStoppedWaiter,
        InstanceTerminatedWaiter,
    )
    from mypy_boto3_ssm import SSMClient

    InstanceWaiter = InstanceRunningWaiter | InstanceStoppedWaiter | InstanceTerminatedWaiter

GENERAL_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 10})
LAUNCH_CONFIG = Config(retries={"total_max_attempts": 1})

# The Deep Learning Base OSS Nvidia Driver GPU AMI: its public SSM parameter, then by name.
DLAMI_PARAMETER = (
    "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
DLAMI_OWNER = "898082745236"

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]

T = TypeVar("T")


def new_session() -> boto3.Session:
    """The boto3 session every client comes from: the standard AWS configuration."""
    return boto3.Session()


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


def tag_specification(kind: ResourceTypeType, tags: dict[str, str]) -> TagSpecificationTypeDef:
    return {"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def _tags(items: Iterable[Any] | None) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in items or []}


def retrying(
    call: Callable[[], T], codes: set[str], timeout_s: float, poll_s: float, what: str
) -> T:
    """Run `call`, retrying while AWS answers one of `codes` (e.g. DependencyViolation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except ClientError as error:
            if error_code(error) not in codes or time.monotonic() >= deadline:
                raise CloudError(f"{what}: {error_code(error)}: {error_message(error)}") from None
        time.sleep(poll_s)


class AwsProvider:
    """AWS in one region. Methods return plain data; AWS errors surface as ClientError."""

    def __init__(self, region: str, session: boto3.Session | None = None) -> None:
        self.region = region
        self.session = session or new_session()
        self.ec2: EC2Client = self.session.client("ec2", region_name=region, config=GENERAL_CONFIG)
        self.launch_ec2: EC2Client = self.session.client(
            "ec2", region_name=region, config=LAUNCH_CONFIG
        )
        self.ssm: SSMClient = self.session.client("ssm", region_name=region, config=GENERAL_CONFIG)

    def check_credentials(self) -> None:
        """Fail early and clearly when the credential chain finds nothing."""
        if self.session.get_credentials() is None:
            raise NoCredentials(
                "no AWS credentials found (environment, AWS_PROFILE and ~/.aws files, SSO, "
                "instance or container role). Configure them as for the AWS CLI, e.g. "
                "`aws configure` or `export AWS_PROFILE=...`, then run this again"
            )

    # Lookups --------------------------------------------------------------------------------

    def instance_type(self, name: str) -> TypeInfo:
        try:
            kinds = [cast("InstanceTypeType", name)]
            info = self.ec2.describe_instance_types(InstanceTypes=kinds)["InstanceTypes"][0]
        except ClientError as error:
            if error_code(error).startswith("InvalidInstanceType"):
                raise CloudError(f"{name} does not exist in {self.region}") from None
            raise
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

    def zones_offering(self, instance_type: str) -> list[str]:
        """Availability zones (names) of this region that offer the instance type."""
        pages = self.ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [instance_type]}],
        )
        return sorted(o["Location"] for page in pages for o in page["InstanceTypeOfferings"])

    def zone_names(self) -> dict[str, str]:
        """Zone ID (use1-az4) → this account's zone name (us-east-1b)."""
        zones = self.ec2.describe_availability_zones()["AvailabilityZones"]
        return {z["ZoneId"]: z["ZoneName"] for z in zones}

    def default_subnets(self) -> tuple[str, dict[str, str]]:
        """The default VPC and its default subnet in each zone."""
        vpcs = self.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise CloudError(
                f"{self.region} has no default VPC: declare subnet_ids on the node group"
            )
        vpc = vpcs[0]["VpcId"]
        subnets = self.ec2.describe_subnets(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "default-for-az", "Values": ["true"]},
            ]
        )["Subnets"]
        return vpc, {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}

    def subnets(self, ids: list[str]) -> tuple[str, dict[str, str]]:
        """The VPC of the declared subnets and the subnet to use in each of their zones."""
        subnets = self.ec2.describe_subnets(SubnetIds=ids)["Subnets"]
        vpcs = {s["VpcId"] for s in subnets}
        if len(vpcs) != 1:
            raise CloudError(f"subnet_ids {ids} span VPCs {sorted(vpcs)}: use one VPC")
        by_id = {s["SubnetId"]: s["AvailabilityZone"] for s in subnets}
        zones: dict[str, str] = {}
        for subnet in ids:
            zones.setdefault(by_id[subnet], subnet)
        return vpcs.pop(), zones

    def dlami(self, architecture: str) -> Image:
        """The newest Deep Learning Base OSS Nvidia Driver AMI: SSM parameter, else by name."""
        parameter = DLAMI_PARAMETER.format(arch=architecture)
        try:
            ami = self.ssm.get_parameter(Name=parameter)["Parameter"].get("Value", "")
            return self.image(ami, source=f"SSM {parameter}")
        except ClientError as error:
            if error_code(error) not in ("ParameterNotFound", "AccessDeniedException"):
                raise
        pages = self.ec2.get_paginator("describe_images").paginate(
            Owners=[DLAMI_OWNER],
            Filters=[
                {"Name": "name", "Values": [DLAMI_NAME]},
                {"Name": "state", "Values": ["available"]},
                {"Name": "architecture", "Values": [architecture]},
            ],
        )
        images = [i for page in pages for i in page["Images"]]
        if not images:
            raise CloudError(
                f"no Deep Learning Base OSS Nvidia Driver AMI in {self.region} "
                f"(SSM {parameter}, nor images named {DLAMI_NAME!r} by {DLAMI_OWNER})"
            )
        newest = max(images, key=lambda i: i.get("CreationDate", ""))
        return self.image(newest["ImageId"], source=f"newest image by {DLAMI_OWNER}")

    def image(self, ami: str, source: str) -> Image:
        images = self.ec2.describe_images(ImageIds=[ami])["Images"]
        if not images:
            raise CloudError(f"AMI {ami} ({source}) does not exist in {self.region}")
        image = images[0]
        root = image.get("RootDeviceName", "/dev/sda1")
        sizes = [
            m.get("Ebs", {}).get("VolumeSize", 0)
            for m in image.get("BlockDeviceMappings", [])
            if m.get("DeviceName") == root
        ]
        return Image(ami, image.get("Name", ""), root, max(sizes or [0]), source)

    def capacity_reservation(self, reservation: str) -> CapacityReservation:
        try:
            (found,) = self.ec2.describe_capacity_reservations(
                CapacityReservationIds=[reservation]
            )["CapacityReservations"]
        except ClientError as error:
            if error_code(error).startswith("InvalidCapacityReservationId"):
                message = f"capacity reservation {reservation}: {error_message(error)}"
                raise CloudError(message) from None
            raise
        return CapacityReservation(
            id=reservation,
            instance_type=found.get("InstanceType", ""),
            zone=found.get("AvailabilityZone", ""),
            state=found.get("State", ""),
            available=found.get("AvailableInstanceCount", 0),
            capacity_block=found.get("ReservationType") == "capacity-block",
        )

    # What exists ----------------------------------------------------------------------------

    def find(self, tag: str, value: str) -> list[Found]:
        """Everything servekit creates that carries tag=value (instances not yet terminated)."""
        by_tag: list[FilterTypeDef] = [{"Name": f"tag:{tag}", "Values": [value]}]
        return [
            *self._instances(by_tag),
            *self._security_groups(by_tag),
            *self._key_pairs(by_tag),
            *self._placement_groups(by_tag),
            *self._addresses(by_tag),
        ]

    def lookup(self, type_: ResourceType, ids: list[str]) -> list[Found]:
        """The resources among `ids` that still exist."""
        if not ids:
            return []
        match type_:
            case "aws_instance":
                return self._instances([{"Name": "instance-id", "Values": ids}])
            case "aws_security_group":
                return self._security_groups([{"Name": "group-id", "Values": ids}])
            case "aws_key_pair":
                return self._key_pairs([{"Name": "key-name", "Values": ids}])
            case "aws_placement_group":
                return self._placement_groups([{"Name": "group-name", "Values": ids}])
            case "aws_eip":
                return self._addresses([{"Name": "allocation-id", "Values": ids}])

    def _instances(self, filters: list[FilterTypeDef]) -> list[Found]:
        live: FilterTypeDef = {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[*filters, live])
        return [
            self._instance(i)
            for page in pages
            for r in page["Reservations"]
            for i in r["Instances"]
        ]

    def _instance(self, instance: InstanceTypeDef) -> Found:
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
            region=self.region,
            tags=_tags(instance.get("Tags")),
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

    def _security_groups(self, filters: list[FilterTypeDef]) -> list[Found]:
        pages = self.ec2.get_paginator("describe_security_groups").paginate(Filters=filters)
        found = []
        for page in pages:
            for group in page["SecurityGroups"]:
                rules = [
                    p
                    for p in group.get("IpPermissions", [])
                    if p.get("IpProtocol") == "tcp" and p.get("FromPort") == 22
                ]
                ssh = [r["CidrIp"] for p in rules for r in p.get("IpRanges", [])]
                ssh += [r["CidrIpv6"] for p in rules for r in p.get("Ipv6Ranges", [])]
                found.append(
                    Found(
                        type="aws_security_group",
                        id=group["GroupId"],
                        region=self.region,
                        tags=_tags(group.get("Tags")),
                        attributes={
                            "group_name": group.get("GroupName"),
                            "vpc_id": group.get("VpcId"),
                            "ssh_cidrs": sorted(ssh),
                        },
                    )
                )
        return found

    def _key_pairs(self, filters: list[FilterTypeDef]) -> list[Found]:
        try:
            pairs = self.ec2.describe_key_pairs(Filters=filters)["KeyPairs"]
        except ClientError as error:
            if error_code(error) == "InvalidKeyPair.NotFound":
                return []
            raise
        return [
            Found(
                type="aws_key_pair",
                id=pair.get("KeyName", ""),
                region=self.region,
                tags=_tags(pair.get("Tags")),
                attributes={"key_pair_id": pair.get("KeyPairId")},
            )
            for pair in pairs
        ]

    def _placement_groups(self, filters: list[FilterTypeDef]) -> list[Found]:
        groups = self.ec2.describe_placement_groups(Filters=filters)["PlacementGroups"]
        return [
            Found(
                type="aws_placement_group",
                id=group.get("GroupName", ""),
                region=self.region,
                tags=_tags(group.get("Tags")),
                status=group.get("State", "available"),
                attributes={"strategy": group.get("Strategy")},
            )
            for group in groups
            if group.get("State") != "deleted"
        ]

    def _addresses(self, filters: list[FilterTypeDef]) -> list[Found]:
        addresses = self.ec2.describe_addresses(Filters=filters)["Addresses"]
        return [
            Found(
                type="aws_eip",
                id=address.get("AllocationId", ""),
                region=self.region,
                tags=_tags(address.get("Tags")),
                attributes={
                    "public_ip": address.get("PublicIp"),
                    "association_id": address.get("AssociationId"),
                    "network_interface_id": address.get("NetworkInterfaceId"),
                },
            )
            for address in addresses
        ]

    # Changes --------------------------------------------------------------------------------

    def import_key_pair(self, name: str, public_key: str, tags: dict[str, str]) -> str:
        reply = self.ec2.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=public_key.encode(),
            TagSpecifications=[tag_specification("key-pair", tags)],
        )
        return reply.get("KeyPairId", "")

    def delete_key_pair(self, name: str) -> None:
        self.ec2.delete_key_pair(KeyName=name)

    def create_security_group(self, name: str, vpc: str, tags: dict[str, str]) -> str:
        return self.ec2.create_security_group(
            GroupName=name,
            Description="servekit: SSH from the declared CIDRs, all traffic between members",
            VpcId=vpc,
            TagSpecifications=[tag_specification("security-group", tags)],
        )["GroupId"]

    def allow_members(self, group: str) -> None:
        """All traffic between members, both ways: EFA needs the self-referencing egress."""
        members: list[IpPermissionTypeDef] = [
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}
        ]
        for authorize in (
            self.ec2.authorize_security_group_ingress,
            self.ec2.authorize_security_group_egress,
        ):
            try:
                authorize(GroupId=group, IpPermissions=members)
            except ClientError as error:
                if error_code(error) != "InvalidPermission.Duplicate":
                    raise

    def set_ssh_cidrs(self, group: str, add: list[str], remove: list[str]) -> None:
        def ssh(cidrs: list[str]) -> list[IpPermissionTypeDef]:
            """IPv4 networks go in IpRanges, IPv6 ones in Ipv6Ranges (EC2's IpPermission)."""
            ranges: list[IpRangeTypeDef] = [
                {"CidrIp": c, "Description": "servekit ssh"} for c in cidrs if ":" not in c
            ]
            ranges6: list[Ipv6RangeTypeDef] = [
                {"CidrIpv6": c, "Description": "servekit ssh"} for c in cidrs if ":" in c
            ]
            return [
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": ranges,
                    "Ipv6Ranges": ranges6,
                }
            ]

        if add:
            self.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=ssh(add))
        if remove:
            self.ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=ssh(remove))

    def delete_security_group(self, group: str, timeout_s: float, poll_s: float) -> None:
        """Delete it, waiting out `DependencyViolation` while terminated instances let go."""

        def delete() -> None:
            try:
                self.ec2.delete_security_group(GroupId=group)
            except ClientError as error:
                if error_code(error) != "InvalidGroup.NotFound":
                    raise

        retrying(delete, {"DependencyViolation"}, timeout_s, poll_s, f"deleting {group}")

    def create_placement_group(self, name: str, tags: dict[str, str]) -> None:
        self.ec2.create_placement_group(
            GroupName=name,
            Strategy="cluster",
            TagSpecifications=[tag_specification("placement-group", tags)],
        )

    def delete_placement_group(self, name: str, timeout_s: float, poll_s: float) -> None:
        def delete() -> None:
            try:
                self.ec2.delete_placement_group(GroupName=name)
            except ClientError as error:
                if error_code(error) != "InvalidPlacementGroup.Unknown":
                    raise

        retrying(delete, {"InvalidPlacementGroup.InUse"}, timeout_s, poll_s, f"deleting {name}")

    def run_instance(self, request: RunInstancesRequestTypeDef) -> Found:
        """One `RunInstances` call on the no-retry client; the launch loop handles errors."""
        (instance,) = self.launch_ec2.run_instances(**request)["Instances"]
        return self._instance(instance)

    def console_output(self, instance: str) -> str:
        """The instance's latest serial console output (decoded by botocore), "" if none yet.

        `Latest=True` reads the live console rather than the output buffered after the last
        state transition; it is "supported on instance types that use the Nitro hypervisor" (EC2
        API reference, GetConsoleOutput:
        docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetConsoleOutput.html). Where AWS
        refuses it, the buffered output is read instead.
        """
        try:
            reply = self.ec2.get_console_output(InstanceId=instance, Latest=True)
        except ClientError as error:
            if error_code(error) in ("InvalidInstanceID.NotFound", "UnauthorizedOperation"):
                raise
            reply = self.ec2.get_console_output(InstanceId=instance)
        return reply.get("Output") or ""

    def start_instances(self, ids: list[str]) -> None:
        self.ec2.start_instances(InstanceIds=ids)

    def terminate_instances(self, ids: list[str]) -> None:
        self.ec2.terminate_instances(InstanceIds=ids)

    def wait_running(self, ids: list[str], timeout_s: float, poll_s: float) -> list[Found]:
        self._wait(self.ec2.get_waiter("instance_running"), "running", ids, timeout_s, poll_s)
        return self.lookup("aws_instance", ids)

    def wait_stopped(self, ids: list[str], timeout_s: float, poll_s: float) -> None:
        self._wait(self.ec2.get_waiter("instance_stopped"), "stopped", ids, timeout_s, poll_s)

    def wait_terminated(self, ids: list[str], timeout_s: float, poll_s: float) -> None:
        waiter = self.ec2.get_waiter("instance_terminated")
        self._wait(waiter, "terminated", ids, timeout_s, poll_s)

    @staticmethod
    def _wait(
        waiter: InstanceWaiter, state: str, ids: list[str], timeout_s: float, poll_s: float
    ) -> None:
        # An empty InstanceIds means "every instance": never wait on that (cloud.md §1).
        if not ids:
            return
        delay = max(1, round(poll_s))
        attempts = max(1, int(timeout_s // delay))
        try:
            waiter.wait(InstanceIds=ids, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
        except WaiterError as error:
            raise CloudError(
                f"{', '.join(ids)} not {state} after {timeout_s:.0f} s: {error.last_response}"
            ) from None

    def allocate_address(self, tags: dict[str, str]) -> tuple[str, str]:
        reply = self.ec2.allocate_address(
            Domain="vpc", TagSpecifications=[tag_specification("elastic-ip", tags)]
        )
        return reply["AllocationId"], reply["PublicIp"]

    def associate_address(self, allocation: str, interface: str) -> None:
        # With several network interfaces, an address goes to an interface, not an instance.
        self.ec2.associate_address(
            AllocationId=allocation, NetworkInterfaceId=interface, AllowReassociation=True
        )

    def release_address(self, allocation: str, timeout_s: float, poll_s: float) -> None:
        def release() -> None:
            try:
                self.ec2.release_address(AllocationId=allocation)
            except ClientError as error:
                if error_code(error) != "InvalidAllocationID.NotFound":
                    raise

        retrying(release, {"InvalidIPAddress.InUse"}, timeout_s, poll_s, f"releasing {allocation}")


class Providers:
    """One AwsProvider per region, all from one session, made when first asked for."""

    def __init__(self) -> None:
        self._session: boto3.Session | None = None
        self._by_region: dict[str, AwsProvider] = {}

    def __call__(self, region: str) -> AwsProvider:
        if region not in self._by_region:
            self._session = self._session or new_session()
            self._by_region[region] = AwsProvider(region, self._session)
        return self._by_region[region]
