"""Import boundaries of the cloud code: the inventory (loaded by every pyinfra run) and the cloud
state below it never load boto3, and `servekit cloud`'s command module loads it only when a
command runs (`servekit --help` imports that module)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

AWS_AND_SSH = ("boto3", "botocore", "paramiko")


def modules_after_import(module: str) -> set[str]:
    """The top-level names in sys.modules after a fresh interpreter imports `module`."""
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("module", ["servekit.inventory", "servekit.cloudstate.store"])
def test_inventory_and_cloud_state_do_not_import_boto3(module: str) -> None:
    loaded = modules_after_import(module)
    assert not loaded & {"boto3", "botocore"}, (
        f"{module} loads {sorted(loaded & {'boto3', 'botocore'})}"
    )


def test_cloud_cli_imports_aws_and_ssh_only_when_a_command_runs() -> None:
    loaded = modules_after_import("servekit.cloud.cli")
    assert not loaded & set(AWS_AND_SSH), (
        f"servekit.cloud.cli loads {sorted(loaded & set(AWS_AND_SSH))}"
    )


def test_cloud_state_sits_below_inventory_and_cloud() -> None:
    code = (
        "import json, sys; import servekit.cloudstate.store, servekit.cloudstate.known_hosts; "
        "print(json.dumps(sorted(n for n in sys.modules if n.startswith('servekit.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(result.stdout)
    above = [
        n
        for n in loaded
        if n in ("servekit.inventory", "servekit.cloud") or n.startswith("servekit.cloud.")
    ]
    assert above == []
