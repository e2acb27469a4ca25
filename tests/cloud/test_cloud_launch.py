"""Pure parts: the RunInstances request, ClientTokens, error classes, quota messages, root
volume sizing and fallback checks (no AWS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto_cloud import write_ssh_key

from servekit.cloud.desired import fleet_intents
from servekit.cloud.errors import classify, quota_message
from servekit.cloud.launch import client_token, network_interfaces, run_request
from servekit.cloud.plan import Candidate, GroupLaunch, TypeLaunch
from servekit.errors import FleetError
from servekit.spec import AwsNodeGroup, Fleet, HuggingFace, SecretRef, Serve, Sources


def launch(**changes: Any) -> GroupLaunch:
    fields: dict[str, Any] = {
        "group": "a100",
        "region": "us-east-1",
        "nodes": ["a100-0", "a100-1"],
        "resource_name": "servekit-prod-a100",
        "vpc_id": "vpc-1",
        "candidates": [
            Candidate(instance_type="p4de.24xlarge", zone="us-east-1b", subnet_id="s-b")
        ],
        "types": {"p4de.24xlarge": TypeLaunch(vcpus=96, efa_interfaces=4, price_usd_hour=27.45)},
        "ami_id": "ami-1",
        "ami_name": "dlami",
        "ami_source": "test",
        "root_device_name": "/dev/sda1",
        "root_volume_gib": 243,
        "root_volume_formula": "",
        "placement_group": True,
        "spot": False,
        "capacity_reservation_id": None,
        "capacity_block": False,
        "ssh_user": "ubuntu",
        "ssh_key": "/k",
        "public_key": "ssh-ed25519 AAAA",
        "public_key_sha256": "x",
        "ssh_cidrs": ["203.0.113.0/24"],
    }
    return GroupLaunch(**(fields | changes))


def test_client_tokens_are_deterministic_and_change_with_what_is_launched() -> None:
    token = client_token("lineage-1", "a100-0", 0, "p4de.24xlarge", "us-east-1b")
    assert token == client_token("lineage-1", "a100-0", 0, "p4de.24xlarge", "us-east-1b")
    assert len(token) <= 64 and token.isascii()
    others = {
        client_token("lineage-2", "a100-0", 0, "p4de.24xlarge", "us-east-1b"),
        client_token("lineage-1", "a100-1", 0, "p4de.24xlarge", "us-east-1b"),
        client_token("lineage-1", "a100-0", 1, "p4de.24xlarge", "us-east-1b"),
        client_token("lineage-1", "a100-0", 0, "p4d.24xlarge", "us-east-1b"),
        client_token("lineage-1", "a100-0", 0, "p4de.24xlarge", "us-east-1c"),
    }
    assert token not in others and len(others) == 5


def test_p4de_gets_an_ena_primary_and_efa_only_interfaces_on_every_card() -> None:
    """AWS's recommended layout for several network cards (docs.aws.amazon.com/AWSEC2/latest/
    UserGuide/efa-acc-inst-types.html): ENA primary at card 0 device 0, efa-only at card 0
    device 1, efa-only at device 0 of every other card. (It was one `efa` interface per card,
    the others at device index 1: the older layout, replaced by AWS's efa-only recommendation.)"""
    interfaces = network_interfaces(4, "subnet-1", "sg-1")
    assert [(i["NetworkCardIndex"], i["DeviceIndex"], i["InterfaceType"]) for i in interfaces] == [
        (0, 0, "interface"),
        (0, 1, "efa-only"),
        (1, 0, "efa-only"),
        (2, 0, "efa-only"),
        (3, 0, "efa-only"),
    ]
    assert all("AssociatePublicIpAddress" not in i for i in interfaces)
    assert all(i["Groups"] == ["sg-1"] and i["SubnetId"] == "subnet-1" for i in interfaces)


def test_one_interface_keeps_its_public_address() -> None:
    (efa,) = network_interfaces(1, "subnet-1", "sg-1")
    assert efa["InterfaceType"] == "efa" and efa["AssociatePublicIpAddress"] is True
    (plain,) = network_interfaces(0, "subnet-1", "sg-1")
    assert "InterfaceType" not in plain and plain["AssociatePublicIpAddress"] is True


def test_the_request_tags_at_creation_and_sizes_a_gp3_root() -> None:
    tags = {"managed-by": "servekit", "servekit-node": "a100-0"}
    request = run_request(launch(), launch().candidates[0], "sg-1", "tok", tags)
    assert request["ClientToken"] == "tok"
    assert (request["MinCount"], request["MaxCount"]) == (1, 1)
    assert "SubnetId" not in request and "SecurityGroupIds" not in request
    assert request["Placement"] == {
        "AvailabilityZone": "us-east-1b",
        "GroupName": "servekit-prod-a100",
    }
    (root,) = request["BlockDeviceMappings"]
    assert root["DeviceName"] == "/dev/sda1"
    assert root["Ebs"]["VolumeType"] == "gp3" and root["Ebs"]["VolumeSize"] == 243
    assert root["Ebs"]["Encrypted"] is True  # issue 11: never an unencrypted root volume
    kinds = {spec["ResourceType"] for spec in request["TagSpecifications"]}
    assert kinds == {"instance", "volume", "network-interface"}
    assert all(
        {"Key": "servekit-node", "Value": "a100-0"} in spec["Tags"]
        for spec in request["TagSpecifications"]
    )
    assert "InstanceMarketOptions" not in request
    assert "CapacityReservationSpecification" not in request


def test_spot_and_capacity_block_market_options() -> None:
    spot = run_request(launch(spot=True), launch().candidates[0], "sg", "t", {})
    assert spot["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        },
    }
    block = launch(capacity_reservation_id="cr-1", capacity_block=True, placement_group=False)
    request = run_request(block, block.candidates[0], "sg", "t", {})
    assert request["InstanceMarketOptions"] == {"MarketType": "capacity-block"}
    assert request["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {"CapacityReservationId": "cr-1"}
    }
    assert "GroupName" not in request["Placement"]


def error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "RunInstances")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("InsufficientInstanceCapacity", "capacity"),
        ("Unsupported", "capacity"),
        ("VcpuLimitExceeded", "quota"),
        ("MaxSpotInstanceCountExceeded", "quota"),
        ("RequestLimitExceeded", "transient"),
        ("InvalidParameterValue", "fatal"),
        ("UnauthorizedOperation", "fatal"),
    ],
)
def test_errors_are_classified_as_the_launch_loop_needs(code: str, kind: str) -> None:
    assert classify(error(code)) == kind


@pytest.mark.parametrize(
    ("instance_type", "spot", "code"),
    [
        ("p4de.24xlarge", False, "L-417A185B"),
        ("p5.48xlarge", True, "L-7212CCBC"),
        ("g6e.12xlarge", False, "L-DB2E81BA"),
        ("g5.xlarge", True, "L-3819A6DF"),
    ],
)
def test_quota_messages_name_the_service_quotas_code(
    instance_type: str, spot: bool, code: str
) -> None:
    message = quota_message(error("VcpuLimitExceeded"), instance_type, 2, 96, spot, "us-west-2")
    assert f"--quota-code {code}" in message and "--region us-west-2" in message
    assert "needs 192 vCPUs" in message


def fleet(tmp_path: Path, **group: Any) -> Fleet:
    key = tmp_path / "id"
    write_ssh_key(key)
    fields: dict[str, Any] = {
        "name": "a100",
        "instance_type": "p4de.24xlarge",
        "count": 2,
        "region": "us-east-1",
        "ssh_key": key,
        "ssh_cidrs": ["203.0.113.0/24"],
    }
    return Fleet(
        name="prod",
        machines=[AwsNodeGroup(**(fields | group))],
        serve=[Serve(model="llama-3.1-70b-instruct")],
        engine_api_key=SecretRef(file="~/engine.key"),
        sources=Sources(weights=HuggingFace(token=SecretRef(file="~/hf-token"))),
    )


def test_the_root_volume_holds_the_ami_the_weights_and_the_engine(tmp_path: Path) -> None:
    (intent,) = fleet_intents(fleet(tmp_path))
    assert intent.weights_gib == pytest.approx(131.42)
    assert intent.root_volume_gib(75) == 243  # ceil(75 + 1.05 × 131.42 + 30)
    assert intent.root_volume_formula(75) == "75 AMI + 1.05 × 131.4 weights + 30 engine"
    (declared,) = fleet_intents(fleet(tmp_path, root_volume_gib=500))
    assert declared.root_volume_gib(75) == 500


def test_a_fallback_type_that_cannot_serve_the_fleet_is_refused(tmp_path: Path) -> None:
    assert fleet_intents(fleet(tmp_path, fallback_instance_types=["p4d.24xlarge"]))
    with pytest.raises(FleetError) as refused:
        fleet_intents(fleet(tmp_path, fallback_instance_types=["g5.xlarge"]))
    (problem,) = refused.value.problems
    assert problem.field == "machines.a100.fallback_instance_types"
    assert "g5.xlarge cannot serve this fleet" in problem.message
