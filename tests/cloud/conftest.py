"""The cloud tier: a moto server (with what moto lacks added) on a loopback port, reached by
boto3 over real HTTP through `AWS_ENDPOINT_URL`, and a home directory with the fleet's SSH key."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import moto_extras
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from moto.moto_api._internal.models import moto_api_backend
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from servekit.cli import app

ROOT = Path(__file__).resolve().parents[2]
PROD = ROOT / "inventories" / "prod.py"
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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    moto_extras.install()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


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


@pytest.fixture
def cloud(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    moto_api_backend.reset()
    moto_extras.reset()
    moto_extras.add_dlami(REGION)
    home = tmp_path / "home"
    write_ssh_key(home / ".ssh" / "servekit-prod")
    state_dir = tmp_path / "cloud"
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    settings = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
        "HOME": str(home),
        "SERVEKIT_STATE_DIR": str(state_dir),
        "COLUMNS": "200",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return Cloud(moto_endpoint, home, state_dir, dict(os.environ))
