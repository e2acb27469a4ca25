"""The `RunInstances` request for one node: pure, so the layout can be read and tested.

- **ClientToken**: derived from (state lineage, node, the node's generation, instance type,
  zone), so a retry of the same launch (a lost reply, or a rerun after a crash before the state
  was written) is the same request and AWS returns the instance it already made, while a
  relaunch after a destroy (a new generation) or in another zone is a new one. Tokens are at
  most 64 ASCII characters.
- **Tags at creation** on the instance, its volumes and its network interfaces.
- **Network**: on a type with several EFA network cards (p4d/p4de: 4, p5/p5e: 32, p5en: 16, from
  `describe_instance_types`), AWS's recommended layout ("Maximize network bandwidth on Amazon EC2
  instances with multiple network cards", docs.aws.amazon.com/AWSEC2/latest/UserGuide/
  efa-acc-inst-types.html): an ENA interface as the primary (card 0, device 0; an `efa-only`
  interface cannot be the primary), an `efa-only` interface on card 0 at device index 1, and an
  `efa-only` interface at device index 0 on every other card. On p5/p5e this is AWS's "use case
  1": the full 3,200 Gbps of EFA, 100 Gbps of IP and one private address (its "use case 2" adds
  an ENA interface to every fourth card for 800 Gbps of IP, at the cost of 8 private addresses
  and the Linux routing problems AWS warns about; servekit's NCCL_SOCKET_IFNAME and cluster
  address assume one). EFA-only interfaces carry no IP address. `AssociatePublicIpAddress` is
  refused with more than one interface in the request (EC2 API reference,
  InstanceNetworkInterfaceSpecification), so such nodes get an Elastic IP on the primary after
  launch. A one-card EFA type keeps one `efa` interface (EFA with ENA) with its public address.
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
    """The launch's interfaces: one ENA (no EFA), one `efa` (one EFA card), or AWS's layout for
    several EFA cards (module docstring): ENA primary, `efa-only` on card 0 and on every other
    card."""

    def interface(
        card: int, device: int, kind: str
    ) -> InstanceNetworkInterfaceSpecificationTypeDef:
        return {
            "NetworkCardIndex": card,
            "DeviceIndex": device,
            "InterfaceType": kind,
            "SubnetId": subnet_id,
            "Groups": [security_group],
            "DeleteOnTermination": True,
        }

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
    if efa_interfaces == 1:
        only = interface(0, 0, "efa")
        only["AssociatePublicIpAddress"] = True
        return [only]
    primary = [interface(0, 0, "interface"), interface(0, 1, "efa-only")]
    return primary + [interface(card, 0, "efa-only") for card in range(1, efa_interfaces)]


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
