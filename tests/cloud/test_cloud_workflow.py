"""`servekit cloud` as a user runs it (the installed console script, in a subprocess) against a
moto server over HTTP: plan → apply → status → apply again → pyinfra → destroy."""

from __future__ import annotations

import json
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

from moto_cloud import PYINFRA, ROOT, Cloud

PROD = "inventories/prod.py"


def state(cloud: Cloud) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((cloud.state_dir / "prod.json").read_text())
    return data


def resources(cloud: Cloud, type_: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in state(cloud)["resources"] if r["type"] == type_}


def test_plan_apply_status_pyinfra_destroy(cloud: Cloud, tmp_path: Path) -> None:
    saved = tmp_path / "prod.plan.json"
    planned = cloud.run("cloud", "plan", PROD, "--out", str(saved))
    assert planned.returncode == 2, planned.stderr
    assert "Plan: 7 to add, 0 to change, 0 to destroy." in planned.stdout
    assert "$54.90/h, $1,317.60/day" in planned.stdout
    for address in ("aws_security_group.a100", "aws_placement_group.a100", "aws_instance.a100-1"):
        assert f"+ {address}" in planned.stdout
    assert "4 EFA interfaces, an Elastic IP each" in planned.stdout
    assert "root volume gp3 183 GiB = 15 AMI + 1.05 × 131.4 weights + 30 engine" in planned.stdout
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    applied = cloud.run("cloud", "apply", "--plan-file", str(saved), "--no-wait-ssh")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    written = state(cloud)
    assert written["format_version"] == 1 and written["fleet"] == "prod"
    assert uuid.UUID(written["lineage"]) and written["serial"] > 7  # one write per change
    assert stat.S_IMODE((cloud.state_dir / "prod.json").stat().st_mode) == 0o600
    instances = resources(cloud, "aws_instance")
    addresses = resources(cloud, "aws_eip")
    assert set(instances) == set(addresses) == {"a100-0", "a100-1"}
    assert len({i["attributes"]["availability_zone"] for i in instances.values()}) == 1
    for node, instance in instances.items():
        assert instance["attributes"]["public_ip"] == addresses[node]["attributes"]["public_ip"]
        assert instance["attributes"]["private_ip"]

    ec2 = cloud.ec2()
    (reservation,) = ec2.describe_instances(InstanceIds=[instances["a100-1"]["id"]])["Reservations"]
    (described,) = reservation["Instances"]
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags["managed-by"] == "servekit" and tags["servekit-fleet"] == "prod"
    assert tags["servekit-node-index"] == "1" and tags["servekit-role"] == "worker"
    assert tags["servekit-lineage"] == written["lineage"]
    assert described["InstanceType"] == "p4de.24xlarge"
    assert described["KeyName"] == "servekit-prod-a100"
    assert described["PublicIpAddress"] == addresses["a100-1"]["attributes"]["public_ip"]
    (volume,) = ec2.describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [described["InstanceId"]]}]
    )["Volumes"]
    assert (volume["Size"], volume["VolumeType"], volume["Encrypted"]) == (183, "gp3", True)
    group_id = resources(cloud, "aws_security_group")["a100"]["id"]
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    ssh = [p for p in group["IpPermissions"] if p.get("FromPort") == 22]
    assert [r["CidrIp"] for r in ssh[0]["IpRanges"]] == ["203.0.113.0/24"]
    members = [p for p in group["IpPermissionsEgress"] if p.get("UserIdGroupPairs")]
    assert members and members[0]["UserIdGroupPairs"][0]["GroupId"] == group["GroupId"]

    status = cloud.run("cloud", "status", PROD)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "No drift" in status.stdout

    again = cloud.run("cloud", "plan", PROD)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes" in again.stdout
    serial = state(cloud)["serial"]
    reapplied = cloud.run("cloud", "apply", PROD, "--yes", "--no-wait-ssh")
    assert reapplied.returncode == 0 and "No changes" in reapplied.stdout
    assert state(cloud)["serial"] == serial
    stale = cloud.run("cloud", "apply", "--plan-file", str(saved))
    assert stale.returncode == 1 and "make a new plan" in stale.stderr

    inventory = subprocess.run(
        [PYINFRA, "--json", PROD, "debug-inventory"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cloud.env,
        timeout=120,
    )
    assert inventory.returncode == 0, inventory.stderr
    hosts = {h["name"]: h["data"] for h in json.loads(inventory.stdout)}
    for node, instance in instances.items():
        assert hosts[node]["ssh_hostname"] == addresses[node]["attributes"]["public_ip"]
        assert hosts[node]["servekit"]["cluster_address"] == instance["attributes"]["private_ip"]
        assert hosts[node]["ssh_user"] == "ubuntu"
        assert "ssh_strict_host_key_checking" not in hosts[node]  # --no-wait-ssh pinned nothing
    assert "a100-0, a100-1 have no pinned SSH host keys" in inventory.stderr

    destroyed = cloud.run("cloud", "destroy", PROD, "--yes")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert "7 to destroy" in destroyed.stdout
    assert cloud.tagged() == {
        "instances": [],
        "security_groups": [],
        "key_pairs": [],
        "placement_groups": [],
        "addresses": [],
    }
    assert state(cloud)["resources"] == []
    assert state(cloud)["lineage"] == written["lineage"]
    assert cloud.run("cloud", "plan", PROD).returncode == 2


def test_plan_without_credentials_says_so_after_the_offline_part(cloud: Cloud) -> None:
    secrets = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    offline = {k: v for k, v in cloud.env.items() if k not in secrets}
    done = cloud.run("cloud", "plan", PROD, env=offline)
    assert done.returncode == 1
    assert "2 × p4de.24xlarge in us-east-1, $54.90/h" in done.stdout
    assert "no AWS credentials found" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_plan_of_an_inventory_that_cannot_work_is_an_error(cloud: Cloud) -> None:
    (cloud.home / ".ssh" / "servekit-prod.pub").unlink()
    done = cloud.run("cloud", "plan", PROD)
    assert done.returncode == 1
    assert "servekit-prod.pub does not exist" in done.stderr
    assert "ssh-keygen" in done.stderr and "Traceback" not in done.stderr


def test_apply_asks_first_and_changes_nothing_without_a_yes(cloud: Cloud) -> None:
    done = cloud.run("cloud", "apply", PROD)
    assert done.returncode == 1
    assert "Apply these changes?" in done.stdout
    assert "nothing changed" in done.stderr
    assert cloud.tagged()["instances"] == [] and cloud.tagged()["security_groups"] == []
    assert not (cloud.state_dir / "prod.lock").exists()


def test_a_lock_left_by_a_dead_apply_needs_force_unlock(cloud: Cloud) -> None:
    cloud.state_dir.mkdir(parents=True)
    lock = cloud.state_dir / "prod.lock"
    lock.write_text(
        json.dumps(
            {
                "ID": "4f1c-dead",
                "Operation": "apply",
                "Who": "ci@builder",
                "Version": "0.1.0",
                "Created": "2026-11-01T10:00:00+00:00",
                "Path": str(cloud.state_dir / "prod.json"),
                "PID": 999999,
            }
        )
    )
    refused = cloud.run("cloud", "apply", PROD, "--yes", "--no-wait-ssh")
    assert refused.returncode == 1
    assert "did not finish" in refused.stderr and "apply by ci@builder" in refused.stderr
    assert "servekit cloud force-unlock INVENTORY 4f1c-dead" in refused.stderr
    assert cloud.tagged()["instances"] == []

    wrong = cloud.run("cloud", "force-unlock", PROD, "not-it")
    assert wrong.returncode == 1 and "does not match" in wrong.stderr and lock.exists()
    unlocked = cloud.run("cloud", "force-unlock", PROD, "4f1c-dead")
    assert unlocked.returncode == 0, unlocked.stderr
    assert not lock.exists()
    assert cloud.run("cloud", "apply", PROD, "--yes", "--no-wait-ssh").returncode == 0
    assert len(cloud.tagged()["instances"]) == 2
