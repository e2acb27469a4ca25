"""The gateway's configuration swap against the real HAProxy binary (Debian's, on this machine):
a configuration `haproxy -c` accepts replaces the old one; one it refuses is rolled back, and the
failure names where HAProxy found the error, never the line (it may hold the engine key)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from servekit.operations.gateway import swap_and_check_command
from servekit.operations.staged import KEPT, STAGED

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")

GOOD = """defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend openai
    bind 127.0.0.1:18089
    http-request set-var(txn.client) req.hdr(authorization),map({keys})
    default_backend engines
backend engines
    server e0 127.0.0.1:9
"""
BAD_SECRET = "sk-engine-secret-0123456789"


def swap(config: Path, keys: Path) -> subprocess.CompletedProcess[str]:
    command = swap_and_check_command([str(config), str(keys)], str(config))
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True)


def stage(path: Path, content: str) -> None:
    Path(str(path) + STAGED).write_text(content)


def test_an_accepted_configuration_replaces_the_old_one(tmp_path: Path) -> None:
    config, keys = tmp_path / "haproxy.cfg", tmp_path / "keys.map"
    stage(config, GOOD.format(keys=keys))
    stage(keys, "abc alice\n")
    result = swap(config, keys)
    assert result.returncode == 0, result.stderr
    assert config.read_text() == GOOD.format(keys=keys)
    assert keys.read_text() == "abc alice\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg", "keys.map"]


def test_a_refused_configuration_is_rolled_back(tmp_path: Path) -> None:
    config, keys = tmp_path / "haproxy.cfg", tmp_path / "keys.map"
    config.write_text(GOOD.format(keys=keys))
    keys.write_text("abc alice\n")
    bad = GOOD.format(keys=keys).replace(
        "default_backend engines", f'http-request set-header Authorization "Bearer {BAD_SECRET}" x'
    )
    stage(config, bad + "    no-such-keyword here\n")
    stage(keys, "def bob\n")
    result = swap(config, keys)
    assert result.returncode != 0
    assert "HAProxy refused the new gateway configuration" in result.stderr
    assert f"{config}:" in result.stderr  # where, as file:line
    assert BAD_SECRET not in result.stderr + result.stdout
    assert config.read_text() == GOOD.format(keys=keys)
    assert keys.read_text() == "abc alice\n"
    assert not any(p.name.endswith((STAGED, KEPT)) for p in tmp_path.iterdir())


def test_a_refused_first_configuration_leaves_no_file_behind(tmp_path: Path) -> None:
    config, keys = tmp_path / "haproxy.cfg", tmp_path / "keys.map"
    config.write_text(GOOD.format(keys=keys))
    stage(config, "frontend x\n    bogus\n")
    stage(keys, "def bob\n")
    result = swap(config, keys)
    assert result.returncode != 0
    assert config.read_text() == GOOD.format(keys=keys)
    assert not keys.exists()
