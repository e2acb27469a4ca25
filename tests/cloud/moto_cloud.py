"""The cloud tier's helpers: a clean moto account reached over HTTP, the environment a user of
`servekit cloud` would have, and an SSH key in OpenSSH format."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from typer.testing import CliRunner

from servekit.cli import app

ROOT = Path(__file__).resolve().parents[2]
SERVEKIT = shutil.which("servekit", path=str(Path(sys.executable).parent)) or "servekit"
PYINFRA = shutil.which("pyinfra", path=str(Path(sys.executable).parent)) or "pyinfra"
REGION = "us-east-1"


def write_ssh_key(private: Path) -> None:
    """An ed25519 key pair in OpenSSH format: `private` and `private.pub`."""
    key = ed25519.Ed25519PrivateKey.generate()
    private.parent.mkdir(parents=True, exist_ok=True)
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    Path(f"{private}.pub").write_bytes(public + b" servekit-test\n")


@dataclass
class Cloud:
    """A clean moto account, and the environment a user of `servekit cloud` would have."""

    endpoint: str
    home: Path
    state_dir: Path
    env: dict[str, str]

    def ec2(self) -> Any:
        return boto3.client("ec2", region_name=REGION, endpoint_url=self.endpoint)

    def tagged(self, fleet: str = "prod") -> dict[str, list[str]]:
        """Everything in moto still tagged for the fleet (instances not terminated)."""
        ec2 = self.ec2()
        by_tag = [{"Name": "tag:servekit-fleet", "Values": [fleet]}]
        live = {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}
        reservations = ec2.describe_instances(Filters=[*by_tag, live])["Reservations"]
        return {
            "instances": [i["InstanceId"] for r in reservations for i in r["Instances"]],
            "security_groups": [
                g["GroupId"] for g in ec2.describe_security_groups(Filters=by_tag)["SecurityGroups"]
            ],
            "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=by_tag)["KeyPairs"]],
            "placement_groups": [
                g["GroupName"]
                for g in ec2.describe_placement_groups(Filters=by_tag)["PlacementGroups"]
            ],
            "addresses": [
                a["AllocationId"] for a in ec2.describe_addresses(Filters=by_tag)["Addresses"]
            ],
        }

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The installed `servekit` console script, as a user runs it."""
        return subprocess.run(
            [SERVEKIT, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=self.env if env is None else env,
            stdin=subprocess.DEVNULL,
        )

    def invoke(self, *args: str) -> Any:
        """`servekit` in this process (so botocore event hooks can inject faults)."""
        return CliRunner().invoke(app, list(args))
