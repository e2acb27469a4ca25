"""The cloud tier: a moto server (with what moto lacks added) on a loopback port, reached by
boto3 over real HTTP through `AWS_ENDPOINT_URL`, and a home directory with the fleet's SSH key."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import moto_extras
import pytest
from moto.moto_api._internal.models import moto_api_backend
from moto.server import ThreadedMotoServer
from moto_cloud import REGION, Cloud, write_ssh_key


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    moto_extras.install()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def cloud(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    moto_api_backend.reset()
    moto_extras.reset()
    moto_extras.add_dlami(REGION)
    home = tmp_path / "home"
    write_ssh_key(home / ".ssh" / "servekit-prod")
    # The secrets inventories/prod.py names: pyinfra checks them when it loads the inventory.
    for secret in ("prod/client-keys", "prod/engine.key", "hf-token"):
        path = home / ".config" / "servekit" / secret
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("sk-test\n")
        path.chmod(0o600)
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
