"""Other node groups against moto: one small GPU, spot, a Capacity Block; the AMI lookup; a saved
destroy plan. Requests are read back from the botocore event hook that records them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import moto_extras
import pytest
from cloud_faults import Faults
from moto_cloud import REGION, Cloud

from servekit.cloud import aws
from servekit.cloud.aws import AwsProvider
from servekit.cloud.errors import CloudError

INVENTORY = """
from servekit.inventory import pyinfra_groups
from servekit.spec import AwsNodeGroup, Fleet, HuggingFace, SecretRef, Serve, Sources

fleet = Fleet(
    name="{fleet}",
    machines=[AwsNodeGroup(name="gpu", ssh_key="~/.ssh/servekit-prod",
                           ssh_cidrs=["198.51.100.0/24"], region="us-east-1", {group})],
    serve=[Serve(model="{model}")],
    engine_api_key=SecretRef(file="~/engine.key"),
    sources=Sources(weights=HuggingFace(token=SecretRef(file="~/hf-token"))),
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


def inventory(tmp_path: Path, group: str, model: str = "llama-3.1-8b-instruct") -> str:
    path = tmp_path / "fleet.py"
    path.write_text(INVENTORY.format(fleet="small", group=group, model=model))
    return str(path)


@pytest.fixture
def faults(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Faults:
    faults = Faults()
    monkeypatch.setattr(aws, "new_session", faults.session)
    return faults


def launches(faults: Faults) -> list[dict[str, str]]:
    return faults.launches()


def test_a_single_gpu_without_efa_gets_one_public_interface_and_no_extras(
    cloud: Cloud, faults: Faults, tmp_path: Path
) -> None:
    fleet = inventory(tmp_path, 'instance_type="g5.xlarge"')
    planned = cloud.invoke("cloud", "plan", fleet)
    assert planned.exit_code == 2, planned.output
    assert "Plan: 3 to add" in planned.output  # key pair, security group, instance
    assert "aws_placement_group" not in planned.output and "aws_eip" not in planned.output
    assert "$1.01/h, $24.14/day" in planned.output
    done = cloud.invoke("cloud", "apply", fleet, "--yes", "--no-wait-ssh")
    assert done.exit_code == 0, done.output
    (request,) = launches(faults)
    assert request["NetworkInterface.1.AssociatePublicIpAddress"] == "true"
    assert "NetworkInterface.2.DeviceIndex" not in request
    assert "NetworkInterface.1.InterfaceType" not in request
    assert "Placement.GroupName" not in request
    assert cloud.tagged("small")["addresses"] == []


def test_spot_is_one_time_and_terminates_on_interruption(
    cloud: Cloud, faults: Faults, tmp_path: Path
) -> None:
    fleet = inventory(tmp_path, 'instance_type="g5.xlarge", spot=True')
    planned = cloud.invoke("cloud", "plan", fleet)
    assert "spot is billed at the lower, varying spot price" in planned.output
    assert cloud.invoke("cloud", "apply", fleet, "--yes", "--no-wait-ssh").exit_code == 0
    (request,) = launches(faults)
    assert request["InstanceMarketOptions.MarketType"] == "spot"
    assert request["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == "one-time"
    assert request["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
    (described,) = [
        i for r in cloud.ec2().describe_instances()["Reservations"] for i in r["Instances"]
    ]
    assert described["InstanceLifecycle"] == "spot"
    assert cloud.invoke("cloud", "plan", fleet).exit_code == 0


def test_a_capacity_block_launches_in_its_zone_with_its_reservation(
    cloud: Cloud, faults: Faults, tmp_path: Path
) -> None:
    moto_extras.add_capacity_reservation(
        REGION, "cr-0abc1234", "p4de.24xlarge", "us-east-1c", capacity_block=True
    )
    fleet = inventory(
        tmp_path,
        'instance_type="p4de.24xlarge", capacity_reservation_id="cr-0abc1234", capacity_block=True',
        model="llama-3.1-70b-instruct",
    )
    planned = cloud.invoke("cloud", "plan", fleet)
    assert planned.exit_code == 2, planned.output
    assert "zones us-east-1c, reservation cr-0abc1234" in planned.output
    assert cloud.invoke("cloud", "apply", fleet, "--yes", "--no-wait-ssh").exit_code == 0
    (request,) = launches(faults)
    assert request["Placement.AvailabilityZone"] == "us-east-1c"
    assert request["InstanceMarketOptions.MarketType"] == "capacity-block"
    assert (
        request["CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"]
        == "cr-0abc1234"
    )


def test_a_reservation_for_another_type_is_refused_before_anything_is_created(
    cloud: Cloud, faults: Faults, tmp_path: Path
) -> None:
    moto_extras.add_capacity_reservation(REGION, "cr-0abc1234", "p4d.24xlarge", "us-east-1c")
    fleet = inventory(
        tmp_path,
        'instance_type="p4de.24xlarge", capacity_reservation_id="cr-0abc1234"',
        model="llama-3.1-70b-instruct",
    )
    done = cloud.invoke("cloud", "apply", fleet, "--yes")
    assert done.exit_code == 1
    assert "cr-0abc1234 holds p4d.24xlarge, not p4de.24xlarge" in done.output
    assert cloud.tagged("small")["security_groups"] == []


def test_the_ami_comes_from_ssm_or_else_the_newest_image_by_name(cloud: Cloud) -> None:
    image = AwsProvider(REGION).dlami("x86_64")
    assert image.id == "ami-0d1a2b3c4d5e6f708" and image.source.startswith("SSM /aws/service/")
    assert (image.root_device_name, image.snapshot_gib) == ("/dev/sda1", 15)
    moto_extras.add_dlami("us-west-2", with_ssm_parameter=False)
    by_name = AwsProvider("us-west-2").dlami("x86_64")
    assert by_name.id == "ami-0d1a2b3c4d5e6f708" and "898082745236" in by_name.source
    with pytest.raises(CloudError, match="no Deep Learning Base OSS Nvidia Driver AMI"):
        AwsProvider("eu-west-1").dlami("x86_64")


def test_a_saved_destroy_plan_is_applied_exactly(cloud: Cloud, tmp_path: Path) -> None:
    fleet = inventory(tmp_path, 'instance_type="g5.xlarge"')
    assert cloud.invoke("cloud", "apply", fleet, "--yes", "--no-wait-ssh").exit_code == 0
    saved = tmp_path / "destroy.json"
    planned = cloud.invoke("cloud", "plan", fleet, "--destroy", "--out", str(saved))
    assert planned.exit_code == 2 and "3 to destroy" in planned.output
    done = cloud.invoke("cloud", "apply", "--plan-file", str(saved))
    assert done.exit_code == 0, done.output
    tagged: dict[str, Any] = cloud.tagged("small")
    assert all(not ids for ids in tagged.values()), tagged


def test_a_p5_launches_with_awss_efa_layout_and_one_public_address_on_the_primary(
    cloud: Cloud, faults: Faults, tmp_path: Path
) -> None:
    """p5.48xlarge: 32 network cards. AWS's layout (docs.aws.amazon.com/AWSEC2/latest/UserGuide/
    efa-acc-inst-types.html, P5 use case 1): ENA primary at card 0 device 0, efa-only at card 0
    device 1 and at device 0 of cards 1-31; no auto-assigned public address (refused with several
    interfaces), an Elastic IP on the primary instead. moto 5.2 accepts but ignores InterfaceType
    and NetworkCardIndex (it keys interfaces by device index), so the layout is read from the
    request boto3 sent; the address is read back from moto."""
    fleet = inventory(tmp_path, 'instance_type="p5.48xlarge"', model="llama-3.1-70b-instruct")
    planned = cloud.invoke("cloud", "plan", fleet)
    assert planned.exit_code == 2, planned.output
    assert "32 EFA interfaces, an Elastic IP each (ENA primary, efa-only on every card)" in (
        planned.output
    )
    done = cloud.invoke("cloud", "apply", fleet, "--yes", "--no-wait-ssh")
    assert done.exit_code == 0, done.output
    (request,) = launches(faults)
    sent = []
    for n in range(1, 40):
        if f"NetworkInterface.{n}.DeviceIndex" not in request:
            break
        field = lambda name: request.get(f"NetworkInterface.{n}.{name}")  # noqa: B023, E731
        sent.append(
            (int(field("NetworkCardIndex")), int(field("DeviceIndex")), field("InterfaceType"))
        )
        assert field("AssociatePublicIpAddress") is None
    expected = [(0, 0, "interface"), (0, 1, "efa-only")]
    expected += [(card, 0, "efa-only") for card in range(1, 32)]
    assert sent == expected
    (address,) = cloud.ec2().describe_addresses()["Addresses"]
    (reservation,) = cloud.ec2().describe_instances()["Reservations"]
    (described,) = reservation["Instances"]
    (primary,) = [
        n["NetworkInterfaceId"]
        for n in described["NetworkInterfaces"]
        if (n["Attachment"]["NetworkCardIndex"], n["Attachment"]["DeviceIndex"]) == (0, 0)
    ]
    assert address["NetworkInterfaceId"] == primary
    assert described["PublicIpAddress"] == address["PublicIp"]
