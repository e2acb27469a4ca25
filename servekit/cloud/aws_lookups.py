"""The read-only EC2 and SSM lookups that resolve a node group's launch at plan time: instance
types, zones, subnets, the Deep Learning AMI and capacity reservations.

A base of `AwsProvider` (aws.py), which makes the clients; kept apart so each file reads as one
concern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from botocore.exceptions import ClientError

from servekit.cloud.errors import CloudError, error_code, error_message
from servekit.cloud.found import (
    CapacityReservation,
    Image,
    TypeInfo,
    image_of,
    reservation_of,
    type_info,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.literals import InstanceTypeType
    from mypy_boto3_ssm import SSMClient

# The Deep Learning Base OSS Nvidia Driver GPU AMI: its public SSM parameter, then by name.
DLAMI_PARAMETER = (
    "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
DLAMI_OWNER = "898082745236"


class LaunchLookups:
    """What a launch needs to know about one region, read from AWS (nothing is changed)."""

    region: str
    ec2: EC2Client
    ssm: SSMClient

    def instance_type(self, name: str) -> TypeInfo:
        try:
            kinds = [cast("InstanceTypeType", name)]
            info = self.ec2.describe_instance_types(InstanceTypes=kinds)["InstanceTypes"][0]
        except ClientError as error:
            if error_code(error).startswith("InvalidInstanceType"):
                raise CloudError(f"{name} does not exist in {self.region}") from None
            raise
        return type_info(name, info)

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
        return image_of(ami, images[0], source)

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
        return reservation_of(reservation, found)
