"""Capacity, quota, crashes and locks: faults injected with botocore event hooks into the
sessions `servekit cloud` makes (in this process), against the moto server over HTTP."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cloud_faults import Faults, Params, SimulatedCrash, error_for, for_node, no_capacity
from moto_cloud import ROOT, Cloud

from servekit.cloud import aws
from servekit.cloud import cli as cloud_cli
from servekit.cloud.ssh import SshNotReady, SshTarget

PROD = str(ROOT / "inventories" / "prod.py")


@pytest.fixture
def faults(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Faults:
    faults = Faults()
    monkeypatch.setattr(aws, "new_session", faults.session)
    return faults


def apply(cloud: Cloud, *extra: str) -> Any:
    return cloud.invoke("cloud", "apply", PROD, "--yes", "--no-wait-ssh", *extra)


def state(cloud: Cloud) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((cloud.state_dir / "prod.json").read_text())
    return data


def recorded(cloud: Cloud, type_: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in state(cloud)["resources"] if r["type"] == type_}


def live_instances(cloud: Cloud) -> list[dict[str, Any]]:
    reservations = cloud.ec2().describe_instances(
        Filters=[{"Name": "tag:servekit-fleet", "Values": ["prod"]}]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def running(cloud: Cloud) -> dict[str, dict[str, Any]]:
    return {i["InstanceId"]: i for i in live_instances(cloud) if i["State"]["Name"] == "running"}


def zones_tried(faults: Faults) -> list[tuple[str, str]]:
    return [(p["InstanceType"], p["Placement.AvailabilityZone"]) for p in faults.launches()]


def test_no_capacity_in_the_first_zone_lands_the_fleet_in_the_next(
    cloud: Cloud, faults: Faults
) -> None:
    faults.rules.append(no_capacity({"us-east-1b"}))
    done = apply(cloud)
    assert done.exit_code == 0, done.output
    assert "no capacity for p4de.24xlarge in us-east-1b (Insufficient" in done.output
    assert {i["Placement"]["AvailabilityZone"] for i in running(cloud).values()} == {"us-east-1c"}
    # Each launch went out once: botocore did not resend the HTTP 500 by itself.
    assert zones_tried(faults) == [
        ("p4de.24xlarge", "us-east-1b"),
        ("p4de.24xlarge", "us-east-1c"),
        ("p4de.24xlarge", "us-east-1c"),
    ]


def test_a_node_without_capacity_moves_the_whole_group_to_one_zone(
    cloud: Cloud, faults: Faults
) -> None:
    faults.rules.append(
        lambda action, params: (
            "InsufficientInstanceCapacity"
            if action == "RunInstances"
            and params["Placement.AvailabilityZone"] == "us-east-1b"
            and for_node(params, "a100-1")
            else None
        )
    )
    done = apply(cloud)
    assert done.exit_code == 0, done.output
    instances = recorded(cloud, "aws_instance")
    assert {i["attributes"]["availability_zone"] for i in instances.values()} == {"us-east-1c"}
    first = [i for i in live_instances(cloud) if i["Placement"]["AvailabilityZone"] == "us-east-1b"]
    assert len(first) == 1 and first[0]["State"]["Name"] == "terminated"
    assert first[0]["InstanceId"] not in {i["id"] for i in instances.values()}
    assert state(cloud)["generations"] == {"a100-0": 1}
    assert set(running(cloud)) == {i["id"] for i in instances.values()}


def test_no_capacity_for_the_type_anywhere_falls_back_to_the_next_type(
    cloud: Cloud, faults: Faults
) -> None:
    faults.rules.append(no_capacity({"us-east-1b", "us-east-1c"}, {"p4de.24xlarge"}))
    done = apply(cloud)
    assert done.exit_code == 0, done.output
    assert {i["InstanceType"] for i in running(cloud).values()} == {"p4d.24xlarge"}
    assert {i["Placement"]["AvailabilityZone"] for i in running(cloud).values()} == {"us-east-1a"}
    assert zones_tried(faults)[:3] == [
        ("p4de.24xlarge", "us-east-1b"),
        ("p4de.24xlarge", "us-east-1c"),
        ("p4d.24xlarge", "us-east-1a"),
    ]
    again = cloud.invoke("cloud", "plan", PROD)
    assert again.exit_code == 0, again.output  # the fallback type is what was declared


def test_no_capacity_anywhere_is_a_clear_error(cloud: Cloud, faults: Faults) -> None:
    faults.rules.append(error_for("RunInstances", "InsufficientInstanceCapacity"))
    done = apply(cloud)
    assert done.exit_code == 1
    assert "no capacity for 2 × a100 in us-east-1; tried p4de.24xlarge in us-east-1b" in done.output
    assert "p4d.24xlarge in us-east-1d (InsufficientInstanceCapacity)" in done.output
    assert len(faults.launches()) == 6  # 2 zones of p4de + 4 of p4d, once each


def test_quota_stops_with_the_service_quotas_code_and_everything_recorded(
    cloud: Cloud, faults: Faults
) -> None:
    faults.rules.append(
        error_for("RunInstances", "VcpuLimitExceeded", lambda p: for_node(p, "a100-1"))
    )
    done = apply(cloud)
    assert done.exit_code == 1
    assert "VcpuLimitExceeded" in done.output and "L-417A185B" in done.output
    assert "Running On-Demand P instances" in done.output
    assert "needs 192 vCPUs (2 × 96)" in done.output and "--desired-value 192" in done.output
    assert len(faults.launches()) == 2  # no zone or type failover on a quota error
    tagged = cloud.tagged()
    by_type = {
        "instances": "aws_instance",
        "security_groups": "aws_security_group",
        "key_pairs": "aws_key_pair",
        "placement_groups": "aws_placement_group",
        "addresses": "aws_eip",
    }
    for kind, type_ in by_type.items():
        assert sorted(tagged[kind]) == sorted(r["id"] for r in recorded(cloud, type_).values())
    assert set(recorded(cloud, "aws_instance")) == {"a100-0"}


def test_an_invalid_request_stops_at_once(cloud: Cloud, faults: Faults) -> None:
    faults.rules.append(error_for("RunInstances", "InvalidParameterCombination"))
    done = apply(cloud)
    assert done.exit_code == 1
    assert "InvalidParameterCombination" in done.output and "Traceback" not in done.output
    assert len(faults.launches()) == 1


def test_a_crash_after_launch_is_adopted_by_the_next_apply(cloud: Cloud, faults: Faults) -> None:
    faults.crash_after("RunInstances")
    with pytest.raises(SimulatedCrash):
        apply(cloud)
    assert "aws_instance" not in {r["type"] for r in state(cloud)["resources"]}
    (orphan,) = cloud.tagged()["instances"]

    planned = cloud.invoke("cloud", "plan", PROD)
    assert planned.exit_code == 2
    assert f"<= aws_instance.a100-0  {orphan}, created by an interrupted apply" in planned.output
    assert "Plan: 1 to adopt, 3 to add" in planned.output

    done = apply(cloud)
    assert done.exit_code == 0, done.output
    assert recorded(cloud, "aws_instance")["a100-0"]["id"] == orphan
    assert len(cloud.tagged()["instances"]) == 2
    assert cloud.invoke("cloud", "plan", PROD).exit_code == 0


@pytest.mark.parametrize(
    "action", ["ImportKeyPair", "CreateSecurityGroup", "CreatePlacementGroup", "AllocateAddress"]
)
def test_a_crash_after_any_creation_loses_nothing(
    cloud: Cloud, faults: Faults, action: str
) -> None:
    faults.crash_after(action)
    with pytest.raises(SimulatedCrash):
        apply(cloud)
    done = apply(cloud)
    assert done.exit_code == 0, done.output
    assert "created by an interrupted apply of this state" in done.output
    tagged = cloud.tagged()
    assert {kind: len(ids) for kind, ids in tagged.items()} == {
        "instances": 2,
        "security_groups": 1,
        "key_pairs": 1,
        "placement_groups": 1,
        "addresses": 2,
    }
    recorded_ids = {r["id"] for r in state(cloud)["resources"]}
    assert recorded_ids == {i for ids in tagged.values() for i in ids}
    assert cloud.invoke("cloud", "plan", PROD).exit_code == 0


def test_scaling_down_then_up_stays_in_the_zone_of_the_running_node(
    cloud: Cloud, faults: Faults, tmp_path: Path
) -> None:
    faults.rules.append(no_capacity({"us-east-1b"}))
    assert apply(cloud).exit_code == 0  # lands in us-east-1c
    faults.rules.clear()
    one = tmp_path / "prod.py"
    one.write_text((ROOT / "inventories" / "prod.py").read_text().replace("count=2", "count=1"))
    planned = cloud.invoke("cloud", "plan", str(one))
    assert "- aws_instance.a100-1" in planned.output and "- aws_eip.a100-1" in planned.output
    assert "Plan: 0 to add, 0 to change, 2 to destroy." in planned.output
    assert "$27.45/h" in planned.output
    assert cloud.invoke("cloud", "apply", str(one), "--yes").exit_code == 0
    assert set(recorded(cloud, "aws_instance")) == {"a100-0"}
    assert len(cloud.tagged()["addresses"]) == 1

    done = apply(cloud)  # back to two: us-east-1b has capacity again, but a100-0 is in 1c
    assert done.exit_code == 0, done.output
    zones = {i["attributes"]["availability_zone"] for i in recorded(cloud, "aws_instance").values()}
    assert zones == {"us-east-1c"}
    assert state(cloud)["generations"] == {"a100-1": 1}


def test_a_launch_not_listed_yet_is_resent_with_the_same_client_token(
    cloud: Cloud, faults: Faults
) -> None:
    faults.crash_after("RunInstances")
    with pytest.raises(SimulatedCrash):
        apply(cloud)
    (first,) = cloud.tagged()["instances"]
    faults.hidden_instances.add(first)  # describe_instances does not show it yet

    planned = cloud.invoke("cloud", "plan", PROD)
    assert "+ aws_instance.a100-0" in planned.output
    faults.hidden_instances.add(first)
    done = apply(cloud)
    assert done.exit_code == 0, done.output
    tokens = [p["ClientToken"] for p in faults.launches() if for_node(p, "a100-0")]
    assert len(tokens) == 2 and tokens[0] == tokens[1]
    assert recorded(cloud, "aws_instance")["a100-0"]["id"] == first
    assert len(cloud.tagged()["instances"]) == 2


def test_a_concurrent_apply_is_refused_by_the_lock(cloud: Cloud, faults: Faults) -> None:
    launching, release = threading.Event(), threading.Event()

    def hold_first_launch(action: str, _params: Params) -> None:
        if action == "RunInstances" and not launching.is_set():
            launching.set()
            release.wait(60)

    faults.rules.append(hold_first_launch)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def first_apply() -> None:
        try:
            cloud_cli.apply(inventory=Path(PROD), yes=True, wait_ssh=False)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=first_apply)
    thread.start()
    try:
        assert launching.wait(60)
        second = cloud.run("cloud", "apply", "inventories/prod.py", "--yes", "--no-wait-ssh")
        destroy = cloud.run("cloud", "destroy", "inventories/prod.py", "--yes")
    finally:
        release.set()
        thread.join(60)
    assert second.returncode == 1
    assert "the state is locked (lock " in second.stderr and ": apply by " in second.stderr
    assert destroy.returncode == 1 and "the state is locked" in destroy.stderr
    assert errors == []
    assert len(cloud.tagged()["instances"]) == 2
    assert set(recorded(cloud, "aws_instance")) == {"a100-0", "a100-1"}
    assert not (cloud.state_dir / "prod.lock").exists()


def test_apply_waits_for_ssh_at_each_nodes_public_address(
    cloud: Cloud, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[SshTarget] = []
    monkeypatch.setattr(cloud_cli, "wait_until_ready", lambda target, _timeout: seen.append(target))
    done = cloud.invoke("cloud", "apply", PROD, "--yes", "--ssh-timeout", "30")
    assert done.exit_code == 0, done.output
    instances = recorded(cloud, "aws_instance")
    addresses = recorded(cloud, "aws_eip")
    assert {(t.node, t.host) for t in seen} == {
        (node, addresses[node]["attributes"]["public_ip"]) for node in instances
    }
    assert {(t.user, t.key) for t in seen} == {("ubuntu", cloud.home / ".ssh" / "servekit-prod")}
    assert all(i["attributes"]["ssh_ready"] is True for i in instances.values())


def test_ssh_that_never_answers_fails_the_apply_and_is_retried_next_time(
    cloud: Cloud, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(target: SshTarget, timeout_s: float) -> None:
        raise SshNotReady(f"{target.node} did not accept SSH within {timeout_s:.0f} s")

    monkeypatch.setattr(cloud_cli, "wait_until_ready", never)
    done = cloud.invoke("cloud", "apply", PROD, "--yes", "--ssh-timeout", "5")
    assert done.exit_code == 1
    assert "a100-0 did not accept SSH within 5 s" in done.output
    assert recorded(cloud, "aws_instance")["a100-0"]["attributes"]["ssh_ready"] is False
    assert recorded(cloud, "aws_instance")["a100-1"]["attributes"]["ssh_ready"] is False
    planned = cloud.invoke("cloud", "plan", PROD)
    assert "~ aws_instance.a100-0  wait for SSH" in planned.output
    assert "~ aws_instance.a100-1  wait for SSH" in planned.output
    assert "Plan: 0 to add, 2 to change, 0 to destroy." in planned.output


def test_drift_stopped_and_missing_machines(cloud: Cloud, faults: Faults) -> None:
    assert apply(cloud).exit_code == 0
    instances = recorded(cloud, "aws_instance")
    ec2 = cloud.ec2()
    ec2.stop_instances(InstanceIds=[instances["a100-0"]["id"]])
    ec2.terminate_instances(InstanceIds=[instances["a100-1"]["id"]])

    status = cloud.invoke("cloud", "status", PROD)
    assert status.exit_code == 2
    assert "stopped" in status.output and "missing from AWS" in status.output
    planned = cloud.invoke("cloud", "plan", PROD)
    assert "~ aws_instance.a100-0  start it (it is stopped)" in planned.output
    gone = instances["a100-1"]["id"]
    assert f"+ aws_instance.a100-1  p4de.24xlarge, first try us-east-1b ({gone} is gone" in (
        planned.output
    )
    done = apply(cloud)
    assert done.exit_code == 0, done.output
    assert len(running(cloud)) == 2
    assert recorded(cloud, "aws_instance")["a100-0"]["id"] == instances["a100-0"]["id"]
    assert state(cloud)["generations"] == {"a100-1": 1}
    assert cloud.invoke("cloud", "status", PROD).exit_code == 0


def test_orphans_are_reported_never_adopted_or_deleted(cloud: Cloud, faults: Faults) -> None:
    ec2 = cloud.ec2()
    (orphan,) = ec2.run_instances(
        ImageId="ami-0d1a2b3c4d5e6f708",
        MinCount=1,
        MaxCount=1,
        InstanceType="p4de.24xlarge",
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "servekit-fleet", "Value": "prod"},
                    {"Key": "servekit-node", "Value": "a100-0"},
                    {"Key": "servekit-lineage", "Value": "another-state"},
                ],
            }
        ],
    )["Instances"]
    orphan_id = orphan["InstanceId"]
    done = apply(cloud)
    assert done.exit_code == 0, done.output
    assert f"! aws_instance {orphan_id} (us-east-1) is tagged for fleet prod" in done.output
    assert orphan_id not in {r["id"] for r in state(cloud)["resources"]}
    status = cloud.invoke("cloud", "status", PROD)
    assert status.exit_code == 2 and orphan_id in status.output
    destroyed = cloud.invoke("cloud", "destroy", PROD, "--yes")
    assert destroyed.exit_code == 0, destroyed.output
    assert orphan_id in destroyed.output
    assert set(running(cloud)) == {orphan_id}


def test_changed_ssh_cidrs_update_the_security_group_in_place(
    cloud: Cloud, faults: Faults, tmp_path: Path
) -> None:
    assert apply(cloud).exit_code == 0
    group = recorded(cloud, "aws_security_group")["a100"]["id"]
    inventory = tmp_path / "prod.py"
    inventory.write_text(
        (ROOT / "inventories" / "prod.py")
        .read_text()
        .replace('ssh_cidrs=["203.0.113.0/24"]', 'ssh_cidrs=["198.51.100.7/32"]')
    )
    planned = cloud.invoke("cloud", "plan", str(inventory))
    assert planned.exit_code == 2
    change = "~ aws_security_group.a100  SSH from 198.51.100.7/32 (was 203.0.113.0/24)"
    assert change in planned.output
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in planned.output
    assert cloud.invoke("cloud", "apply", str(inventory), "--yes").exit_code == 0
    (described,) = cloud.ec2().describe_security_groups(GroupIds=[group])["SecurityGroups"]
    ssh = [
        r["CidrIp"]
        for p in described["IpPermissions"]
        if p.get("FromPort") == 22
        for r in p["IpRanges"]
    ]
    assert ssh == ["198.51.100.7/32"]
