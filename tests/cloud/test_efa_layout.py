"""The EFA layout of a multi-node p4d replica against moto (p5 is in test_cloud_variants.py):
every node's launch request carries AWS's layout for several network cards (docs.aws.amazon.com/
AWSEC2/latest/UserGuide/efa-acc-inst-types.html: ENA primary at card 0 device 0, `efa-only` at
card 0 device 1 and at device 0 of every other card), no auto-assigned public address, and one
Elastic IP on the primary; the address servekit keeps as the node's private (cluster) address is
the primary's. moto 5.2 accepts but ignores InterfaceType and NetworkCardIndex, so the layout is
read from the requests boto3 sent, the addresses from moto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cloud_faults import Faults
from moto_cloud import Cloud

from servekit.cloud import aws

INVENTORY = """
from servekit.inventory import pyinfra_groups
from servekit.spec import AwsNodeGroup, Fleet, HuggingFace, SecretRef, Serve, Sources

fleet = Fleet(
    name="efa",
    machines=[AwsNodeGroup(name="a100", ssh_key="~/.ssh/servekit-prod", count=2,
                           ssh_cidrs=["198.51.100.0/24"], region="us-east-1",
                           instance_type="p4d.24xlarge")],
    serve=[Serve(model="llama-3.1-70b-instruct", nodes_per_replica=2, pipeline_parallel=2)],
    engine_api_key=SecretRef(file="~/engine.key"),
    sources=Sources(weights=HuggingFace(token=SecretRef(file="~/hf-token"))),
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""

P4D_CARDS = 4  # NetworkInfo.MaximumNetworkCards of p4d.24xlarge (servekit/catalog/aws.toml)


@pytest.fixture
def faults(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Faults:
    faults = Faults()
    monkeypatch.setattr(aws, "new_session", faults.session)
    return faults


def layout(request: dict[str, str]) -> list[tuple[int, int, str | None, str | None]]:
    """(card, device index, interface type, AssociatePublicIpAddress) of each interface sent."""
    sent = []
    for n in range(1, 64):
        prefix = f"NetworkInterface.{n}."
        if prefix + "DeviceIndex" not in request:
            break
        sent.append(
            (
                int(request[prefix + "NetworkCardIndex"]),
                int(request[prefix + "DeviceIndex"]),
                request.get(prefix + "InterfaceType"),
                request.get(prefix + "AssociatePublicIpAddress"),
            )
        )
    return sent


def test_each_p4d_node_gets_the_efa_layout_and_one_public_address_on_its_primary(
    cloud: Cloud, faults: Faults, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet.py"
    fleet.write_text(INVENTORY)
    planned = cloud.invoke("cloud", "plan", str(fleet))
    assert planned.exit_code == 2, planned.output
    assert "4 EFA interfaces, an Elastic IP each (ENA primary, efa-only on every card)" in (
        planned.output
    )
    done = cloud.invoke("cloud", "apply", str(fleet), "--yes", "--no-wait-ssh")
    assert done.exit_code == 0, done.output

    expected = [(0, 0, "interface", None), (0, 1, "efa-only", None)]
    expected += [(card, 0, "efa-only", None) for card in range(1, P4D_CARDS)]
    requests = faults.launches()
    assert len(requests) == 2
    assert [layout(r) for r in requests] == [expected, expected]
    assert all(r["InstanceType"] == "p4d.24xlarge" for r in requests)

    ec2 = cloud.ec2()
    addresses = {a["NetworkInterfaceId"]: a for a in ec2.describe_addresses()["Addresses"]}
    described = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert len(described) == 2 and len(addresses) == 2
    state = json.loads((cloud.state_dir / "efa.json").read_text())
    private = {
        r["attributes"]["private_ip"] for r in state["resources"] if r["type"] == "aws_instance"
    }
    for instance in described:
        (primary,) = [
            n
            for n in instance["NetworkInterfaces"]
            if (n["Attachment"]["NetworkCardIndex"], n["Attachment"]["DeviceIndex"]) == (0, 0)
        ]
        address = addresses[primary["NetworkInterfaceId"]]
        assert instance["PublicIpAddress"] == address["PublicIp"]
        assert primary["PrivateIpAddress"] in private
