"""The `RunInstances` request for one node: pure, so the layout can be read and tested.

- **ClientToken**: derived from (state lineage, node, the node's generation, instance type,
  zone), so a retry of the same launch (a lost reply, or a rerun after a crash before the state
  was written) is the same request and AWS returns the instance it already made, while a
  relaunch after a destroy (a new generation) or in another zone is a new one. Tokens are at
  most 64 ASCII characters.
- **Tags at creation** on the instance, its volumes and its network interfaces.
- **Network**: one interface per network card up to the EFA maximum from `describe_instance_types`
  (p4d/p4de: 4), card 0 at device index 0 and the others at device index 1, all of type `efa`
  (supported on every EFA type). Several interfaces forbid `AssociatePublicIpAddress`, so such
  nodes get an Elastic IP after launch instead.
- **Root volume**: gp3 at its baseline (3000 IOPS, 125 MiB/s), deleted with the instance, and
  always encrypted: `Encrypted=True` changes the encryption state of the volume restored from
  the AMI's (public, unencrypted) snapshot, with the account's default EBS key; it can never
  remove encryption (EC2 API reference, EbsBlockDevice.Encrypted:
  docs.aws.amazon.com/AWSEC2/latest/APIReference/API_EbsBlockDevice.html; OpenShift's installer
  boots public AMIs this way, github.com/openshift/installer/pull/3293).
- **Market**: on-demand; one-time spot that terminates on interruption; or a capacity
  reservation / Capacity Block (`MarketType=capacity-block`), as SkyPilot and dstack do.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, cast

from servekit.cloud.aws import tag_specification
from servekit.cloud.plan import Candidate, GroupLaunch

if TYPE_CHECKING:
    from mypy_boto3_ec2.literals import InstanceTypeType
    from mypy_boto3_ec2.type_defs import (
        InstanceNetworkInterfaceSpecificationTypeDef,
        RunInstancesRequestTypeDef,
    )


def client_token(lineage: str, node: str, generation: int, instance_type: str, zone: str) -> str:
    digest = hashlib.sha256(
        "|".join((lineage, node, str(generation), instance_type, zone)).encode()
    ).hexdigest()
    return f"servekit-{digest[:48]}"


def network_interfaces(
    efa_interfaces: int, subnet_id: str, security_group: str
) -> list[InstanceNetworkInterfaceSpecificationTypeDef]:
    if efa_interfaces == 0:
        return [
            {
                "DeviceIndex": 0,
                "SubnetId": subnet_id,
                "Groups": [security_group],
                "AssociatePublicIpAddress": True,
                "DeleteOnTermination": True,
            }
        ]
    interfaces: list[InstanceNetworkInterfaceSpecificationTypeDef] = []
    for card in range(efa_interfaces):
        interface: InstanceNetworkInterfaceSpecificationTypeDef = {
            "DeviceIndex": 0 if card == 0 else 1,
            "NetworkCardIndex": card,
            "InterfaceType": "efa",
            "SubnetId": subnet_id,
            "Groups": [security_group],
            "DeleteOnTermination": True,
        }
        if efa_interfaces == 1:
            interface["AssociatePublicIpAddress"] = True
        interfaces.append(interface)
    return interfaces


def run_request(
    launch: GroupLaunch,
    candidate: Candidate,
    security_group: str,
    token: str,
    tags: dict[str, str],
) -> RunInstancesRequestTypeDef:
    """One instance of the group, at `candidate`, tagged `tags` from the start."""
    efa = launch.types[candidate.instance_type].efa_interfaces
    request: RunInstancesRequestTypeDef = {
        "ImageId": launch.ami_id,
        "InstanceType": cast("InstanceTypeType", candidate.instance_type),
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": token,
        "KeyName": launch.resource_name,
        "NetworkInterfaces": network_interfaces(efa, candidate.subnet_id, security_group),
        "Placement": {"AvailabilityZone": candidate.zone},
        "BlockDeviceMappings": [
            {
                "DeviceName": launch.root_device_name,
                "Ebs": {
                    "VolumeSize": launch.root_volume_gib,
                    "VolumeType": "gp3",
                    "Iops": 3000,
                    "Throughput": 125,
                    "DeleteOnTermination": True,
                    "Encrypted": True,
                },
            }
        ],
        "MetadataOptions": {"HttpTokens": "required"},
        "TagSpecifications": [
            tag_specification("instance", tags),
            tag_specification("volume", tags),
            tag_specification("network-interface", tags),
        ],
    }
    if launch.placement_group:
        request["Placement"]["GroupName"] = launch.resource_name
    if launch.spot:
        request["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
    if launch.capacity_reservation_id:
        request["CapacityReservationSpecification"] = {
            "CapacityReservationTarget": {"CapacityReservationId": launch.capacity_reservation_id}
        }
        if launch.capacity_block:
            request["InstanceMarketOptions"] = {"MarketType": "capacity-block"}
    return request
