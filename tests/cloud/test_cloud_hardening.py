"""Issue 11, cloud: regions, zones and whole-internet SSH refused at load; encrypted root volumes;
SSH host keys pinned from the console output (a real SSH server, moto over HTTP), and the
known_hosts file pyinfra then checks strictly."""

from __future__ import annotations

import functools
import json
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import moto_extras
import paramiko
import pytest
from cloud_faults import Faults, error_for
from moto_cloud import PYINFRA, ROOT, Cloud
from paramiko_sshd import SshServer

from servekit.cloud import aws
from servekit.cloud import cli as cloud_cli
from servekit.cloud.hostkeys import BEGIN, END, console_host_keys
from servekit.cloud.ssh import SshTarget, wait_until_ready
from servekit.cloud.timeouts import Timeouts
from servekit.errors import FleetError
from servekit.spec import AwsNodeGroup

PROD = str(ROOT / "inventories" / "prod.py")
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJFzgips94nJNoR4QumiyqlJoSlZ48P+NVrd7zgD5k4T"


def group(**changes: Any) -> AwsNodeGroup:
    fields: dict[str, Any] = {
        "name": "a100",
        "instance_type": "p4de.24xlarge",
        "region": "us-east-1",
        "ssh_key": "~/.ssh/servekit-prod",
        "ssh_cidrs": ["203.0.113.0/24"],
    }
    return AwsNodeGroup(**(fields | changes))


def refusal(**changes: Any) -> str:
    with pytest.raises(FleetError) as refused:
        group(**changes).check()  # built on its own, an invalid group raises when used
    assert "Traceback" not in str(refused.value)
    return str(refused.value)


# Load-time checks -------------------------------------------------------------------------------


def test_an_unknown_region_is_refused_with_the_valid_ones() -> None:
    message = refusal(region="us-east1")
    assert "AwsNodeGroup.region" in message and "unknown AWS region 'us-east1'" in message
    assert "did you mean 'us-east-1'" in message
    assert "eu-west-1" in message and "ap-southeast-2" in message  # the list, from botocore
    assert "China, GovCloud" in message


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-2", "cn-north-1", "us-gov-west-1"])
def test_regions_botocore_knows_are_accepted(region: str) -> None:
    assert group(region=region).region == region


def test_a_zone_of_another_region_is_refused() -> None:
    message = refusal(availability_zones=["us-east-1a", "eu-west-1a"])
    assert "AwsNodeGroup.availability_zones:" in message
    assert "'eu-west-1a' is in eu-west-1, not in the group's region us-east-1" in message
    assert "us-east-1a" in message  # the fix names a zone of the region


@pytest.mark.parametrize("zone", ["us-east-2a", "us-east-1", "useast1a", "us-east-1a; rm"])
def test_zones_that_are_not_the_regions_are_refused(zone: str) -> None:
    assert "AwsNodeGroup.availability_zones:" in refusal(availability_zones=[zone])


def test_a_bad_region_is_one_problem_not_also_every_zone() -> None:
    message = refusal(region="mars-1", availability_zones=["mars-1a"])
    assert "(1 problem)" in message and "AwsNodeGroup.region" in message


@pytest.mark.parametrize(
    "zone", ["us-east-1a", "us-east-1f", "use1-az4", "us-east-1-bos-1a", "use1-bos1-az1"]
)
def test_zone_names_and_ids_of_the_region_are_accepted(zone: str) -> None:
    assert group(availability_zones=[zone]).availability_zones == [zone]


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/2", "2000::/3"])
def test_ssh_from_the_whole_internet_needs_the_named_field(cidr: str) -> None:
    message = refusal(ssh_cidrs=["203.0.113.0/24", cidr])
    assert "AwsNodeGroup.ssh_cidrs:" in message and cidr in message
    assert "ssh_from_anywhere=True" in message
    assert str(group(ssh_cidrs=[cidr], ssh_from_anywhere=True).ssh_cidrs[0]) == cidr


def test_ipv6_and_narrow_networks_need_nothing_more() -> None:
    networks = ["10.0.0.0/8", "2001:db8::/48", "198.51.100.7/32"]
    assert [str(n) for n in group(ssh_cidrs=networks).ssh_cidrs] == networks


@pytest.mark.parametrize("cidr", ["10.0.0.5/24", "10.0.0.0/24, 0.0.0.0/0", "office"])
def test_a_bad_network_is_one_clear_refusal(cidr: str) -> None:
    message = refusal(ssh_cidrs=[cidr])
    assert "is not an IPv4 or IPv6 network" in message and "203.0.113.0/24" in message


# Encrypted root volume: the launch request is checked in test_cloud_launch.py; here moto says
# what the launched instance really got.


def test_the_launched_root_volume_is_encrypted(cloud: Cloud) -> None:
    done = cloud.invoke("cloud", "apply", PROD, "--yes", "--no-wait-ssh")
    assert done.exit_code == 0, done.output
    ids = [r["id"] for r in instances(cloud).values()]
    volumes = cloud.ec2().describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": ids}]
    )["Volumes"]
    assert len(volumes) == 2
    assert all(v["Encrypted"] is True and v["VolumeType"] == "gp3" for v in volumes)


# Host keys from the console ---------------------------------------------------------------------


def test_keys_are_read_from_cloud_inits_block_with_syslog_prefixes() -> None:
    ecdsa = paramiko.ECDSAKey.generate()
    console = moto_extras.console_text([f"ecdsa-sha2-nistp256 {ecdsa.get_base64()}", ED25519])
    assert BEGIN in console and END in console and "\r\n" in console
    prefixed = console.replace(ED25519, f"<14>Dec  6 02:00:00 ec2: {ED25519}")
    keys = [ED25519, f"ecdsa-sha2-nistp256 {ecdsa.get_base64()}"]  # ed25519 first
    assert console_host_keys(console) == keys
    assert console_host_keys(prefixed) == keys


def test_no_complete_block_means_no_keys_yet() -> None:
    assert console_host_keys("Linux version 6.8\r\nbooting") is None
    assert console_host_keys(f"{BEGIN}\r\n{ED25519} root@x\r\n") is None  # still printing
    assert console_host_keys(f"{BEGIN}\r\n{END}\r\n") == []


def test_a_garbled_or_mislabelled_key_is_never_pinned() -> None:
    blob = ED25519.split()[1]
    console = "\n".join(
        [
            BEGIN,
            f"ssh-ed25519 {blob[:40]}",  # cut by a console wrap
            f"ssh-rsa {blob}",  # the blob says ssh-ed25519
            f"ssh-ed25519 {blob} root@host",  # the whole key: pinned once, though listed twice
            f"ssh-ed25519 {blob}",
            END,
        ]
    )
    assert console_host_keys(console) == [ED25519]


# apply against a real SSH server ----------------------------------------------------------------


@pytest.fixture
def sshd(cloud: Cloud, tmp_path: Path) -> Iterator[SshServer]:
    from moto_cloud import write_ssh_key

    host_key = tmp_path / "host_key"
    write_ssh_key(host_key)
    client_pub = (cloud.home / ".ssh" / "servekit-prod.pub").read_text()
    server = SshServer(host_key, "ubuntu", client_pub)
    yield server
    server.close()


@pytest.fixture
def seen(cloud: Cloud, sshd: SshServer, monkeypatch: pytest.MonkeyPatch) -> list[SshTarget]:
    """The readiness check the CLI runs, aimed at the loopback server (moto's IPs are fake)."""
    targets: list[SshTarget] = []

    def ready(target: SshTarget, timeout_s: float) -> str:
        targets.append(target)
        here = replace(target, host="127.0.0.1", port=sshd.port)
        return wait_until_ready(here, timeout_s, poll_s=0.1)

    monkeypatch.setattr(cloud_cli, "wait_until_ready", ready)
    monkeypatch.setattr(cloud_cli, "Timeouts", functools.partial(Timeouts, poll_s=0.05))
    return targets


def server_key(sshd: SshServer) -> str:
    return f"{sshd.host_key.get_name()} {sshd.host_key.get_base64()}"


def instances(cloud: Cloud) -> dict[str, dict[str, Any]]:
    data = json.loads((cloud.state_dir / "prod.json").read_text())
    return {r["name"]: r for r in data["resources"] if r["type"] == "aws_instance"}


def test_apply_pins_the_console_key_logs_in_and_pyinfra_checks_it_strictly(
    cloud: Cloud, sshd: SshServer, seen: list[SshTarget]
) -> None:
    moto_extras.CONSOLE["keys"] = [server_key(sshd)]
    moto_extras.CONSOLE["silent_calls"] = 3  # still booting: no key block yet
    done = cloud.invoke("cloud", "apply", PROD, "--yes", "--ssh-timeout", "30")
    assert done.exit_code == 0, done.output
    assert "host keys pinned: ssh-ed25519" in done.output
    assert moto_extras.CONSOLE["calls"] >= 4  # waited for the block
    assert {t.host_keys for t in seen} == {(server_key(sshd),)}
    assert sshd.commands == ["uptime", "uptime"]
    recorded = instances(cloud)
    assert all(r["attributes"]["ssh_ready"] is True for r in recorded.values())
    assert all(r["attributes"]["host_keys"] == [server_key(sshd)] for r in recorded.values())

    known_hosts = cloud.state_dir / "prod.known_hosts"
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    trusted = paramiko.HostKeys(str(known_hosts))
    for record in recorded.values():
        for address in (record["attributes"]["public_ip"], record["attributes"]["private_ip"]):
            assert trusted.lookup(address) == {"ssh-ed25519": sshd.host_key}

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
    for node in recorded:
        assert hosts[node]["ssh_known_hosts_file"] == str(known_hosts.absolute())
        assert hosts[node]["ssh_strict_host_key_checking"] == "yes"


def test_a_server_with_another_key_than_the_console_is_refused_before_login(
    cloud: Cloud, sshd: SshServer, seen: list[SshTarget]
) -> None:
    console_key = f"ssh-ed25519 {paramiko.Ed25519Key(filename=_new_key(cloud)).get_base64()}"
    moto_extras.CONSOLE["keys"] = [console_key]
    done = cloud.invoke("cloud", "apply", PROD, "--yes", "--ssh-timeout", "30")
    assert done.exit_code == 1
    assert "possible man-in-the-middle" in done.output
    assert sshd.host_key.fingerprint in done.output
    assert sshd.logins == 0 and sshd.commands == []
    assert instances(cloud)["a100-0"]["attributes"]["ssh_ready"] is False
    assert server_key(sshd) not in (cloud.state_dir / "prod.known_hosts").read_text()


def test_a_console_that_never_shows_keys_fails_in_bounds_without_connecting(
    cloud: Cloud, sshd: SshServer, seen: list[SshTarget]
) -> None:
    moto_extras.CONSOLE["silent_calls"] = 10**6
    done = cloud.invoke("cloud", "apply", PROD, "--yes", "--ssh-timeout", "1")
    assert done.exit_code == 1
    assert "console output shows no key block within 1 s" in done.output
    assert "does not trust an unverified key" in done.output
    assert seen == [] and sshd.logins == 0
    assert instances(cloud)["a100-0"]["attributes"]["ssh_ready"] is False


def _new_key(cloud: Cloud) -> str:
    from moto_cloud import write_ssh_key

    path = cloud.home / "impostor"
    write_ssh_key(path)
    return str(path)


def test_ipv6_ssh_networks_reach_the_security_groups_ipv6_ranges(
    cloud: Cloud, tmp_path: Path
) -> None:
    source = Path(PROD).read_text()
    assert 'ssh_cidrs=["203.0.113.0/24"]' in source
    inventory = tmp_path / "prod.py"
    inventory.write_text(
        source.replace(
            'ssh_cidrs=["203.0.113.0/24"]', 'ssh_cidrs=["203.0.113.0/24", "2001:db8::/48"]'
        )
    )
    done = cloud.invoke("cloud", "apply", str(inventory), "--yes", "--no-wait-ssh")
    assert done.exit_code == 0, done.output
    data = json.loads((cloud.state_dir / "prod.json").read_text())
    (sg,) = [r for r in data["resources"] if r["type"] == "aws_security_group"]
    (group,) = cloud.ec2().describe_security_groups(GroupIds=[sg["id"]])["SecurityGroups"]
    (ssh,) = [p for p in group["IpPermissions"] if p.get("FromPort") == 22]
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == ["203.0.113.0/24"]
    assert [r["CidrIpv6"] for r in ssh["Ipv6Ranges"]] == ["2001:db8::/48"]
    assert sg["attributes"]["ssh_cidrs"] == ["2001:db8::/48", "203.0.113.0/24"]
    again = cloud.invoke("cloud", "plan", str(inventory))
    assert again.exit_code == 0 and "No changes" in again.output, again.output


def test_where_the_live_console_is_refused_the_buffered_one_is_read(
    cloud: Cloud, sshd: SshServer, seen: list[SshTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Latest` is for Nitro instances only: another instance still gets its keys pinned."""
    faults = Faults()
    faults.rules.append(
        error_for("GetConsoleOutput", "UnsupportedOperation", lambda p: p.get("Latest") == "true")
    )
    monkeypatch.setattr(aws, "new_session", faults.session)
    moto_extras.CONSOLE["keys"] = [server_key(sshd)]
    done = cloud.invoke("cloud", "apply", PROD, "--yes", "--ssh-timeout", "30")
    assert done.exit_code == 0, done.output
    asked = [p.get("Latest") for action, p in faults.sent if action == "GetConsoleOutput"]
    assert asked == ["true", None, "true", None]
    assert all(
        r["attributes"]["host_keys"] == [server_key(sshd)] for r in instances(cloud).values()
    )


@pytest.mark.parametrize("genuine", [True, False])
def test_pyinfras_ssh_client_enforces_the_known_hosts_file_servekit_writes(
    tmp_path: Path, genuine: bool
) -> None:
    """The file format and the two host-data names the inventory sets, as pyinfra 3.10 reads
    them (pyinfra/connectors/ssh.py: `ssh_known_hosts_file`, `ssh_strict_host_key_checking`
    passed to sshuserclient's SSHClient.connect)."""
    from moto_cloud import write_ssh_key
    from pyinfra.connectors.sshuserclient.client import SSHClient

    from servekit.cloudstate.known_hosts import known_hosts_lines, write_known_hosts

    for name in ("client", "host", "other"):
        write_ssh_key(tmp_path / name)
    server = SshServer(tmp_path / "host", "ubuntu", (tmp_path / "client.pub").read_text())
    try:
        pinned = paramiko.Ed25519Key(filename=str(tmp_path / ("host" if genuine else "other")))
        known = tmp_path / "prod.known_hosts"
        lines = known_hosts_lines(
            [("127.0.0.1", server.port, [f"ssh-ed25519 {pinned.get_base64()}"])]
        )
        write_known_hosts(known, lines)
        client = SSHClient()
        connect = functools.partial(
            client.connect,
            "127.0.0.1",
            port=server.port,
            username="ubuntu",
            key_filename=str(tmp_path / "client"),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            _pyinfra_ssh_known_hosts_file=str(known),
            _pyinfra_ssh_strict_host_key_checking="yes",
        )
        if genuine:
            connect()
            client.close()
            assert server.logins == 1
        else:
            with pytest.raises(paramiko.BadHostKeyException):
                connect()
            assert server.logins == 0
    finally:
        server.close()
