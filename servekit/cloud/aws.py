"""The provider seam: every AWS call `servekit cloud` makes, for one region, over boto3.

Clients come from the standard AWS configuration (credential chain, `AWS_PROFILE`,
`AWS_ENDPOINT_URL`), through `new_session()`. Two EC2 clients: a general one with adaptive retries,
and a launch client that never retries by itself, because botocore would otherwise resend
`RunInstances` on `InsufficientInstanceCapacity` (an HTTP 500) instead of letting the launch loop
move to the next zone.

Placement groups, capacity reservations and the Deep Learning AMI's public SSM parameter are
plain calls here, although moto (the test double) lacks them: the tests add what moto lacks to
the moto server they start, so this module runs unchanged against both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

from servekit.cloud.aws_lookups import LaunchLookups
from servekit.cloud.errors import CloudError, NoCredentials, error_code, error_message
from servekit.cloud.found import (
    Found,
    address_found,
    instance_found,
    key_pair_found,
    placement_group_found,
    security_group_found,
)
from servekit.cloudstate.store import ResourceType

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.literals import ResourceTypeType
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
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

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]

T = TypeVar("T")


def new_session() -> boto3.Session:
    """The boto3 session every client comes from: the standard AWS configuration."""
    return boto3.Session()


def tag_specification(kind: ResourceTypeType, tags: dict[str, str]) -> TagSpecificationTypeDef:
    return {"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


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


class AwsProvider(LaunchLookups):
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
            instance_found(self.region, i)
            for page in pages
            for r in page["Reservations"]
            for i in r["Instances"]
        ]

    def _security_groups(self, filters: list[FilterTypeDef]) -> list[Found]:
        pages = self.ec2.get_paginator("describe_security_groups").paginate(Filters=filters)
        return [
            security_group_found(self.region, group)
            for page in pages
            for group in page["SecurityGroups"]
        ]

    def _key_pairs(self, filters: list[FilterTypeDef]) -> list[Found]:
        try:
            pairs = self.ec2.describe_key_pairs(Filters=filters)["KeyPairs"]
        except ClientError as error:
            if error_code(error) == "InvalidKeyPair.NotFound":
                return []
            raise
        return [key_pair_found(self.region, pair) for pair in pairs]

    def _placement_groups(self, filters: list[FilterTypeDef]) -> list[Found]:
        groups = self.ec2.describe_placement_groups(Filters=filters)["PlacementGroups"]
        return [
            placement_group_found(self.region, group)
            for group in groups
            if group.get("State") != "deleted"
        ]

    def _addresses(self, filters: list[FilterTypeDef]) -> list[Found]:
        addresses = self.ec2.describe_addresses(Filters=filters)["Addresses"]
        return [address_found(self.region, address) for address in addresses]

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
        return instance_found(self.region, instance)

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
        # An empty InstanceIds means "every instance": never wait on that.
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
