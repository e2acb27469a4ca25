"""Where test hosts cannot boot, `hosts` tests are skipped with the reason, or fail under CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).parents[1]

HOSTS_TEST = """
import pytest

@pytest.mark.hosts
def test_needs_hosts(test_hosts):
    test_hosts(1)
"""


def run_without_nspawn(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    """Run a `hosts` test in a fresh pytest whose PATH has every tool but systemd-nspawn."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("debootstrap", "ip", "iptables", "mount", "ssh", "ssh-keygen"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (tmp_path / "test_gate.py").write_text(HOSTS_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    hosts: test hosts\n")
    env = {**os.environ, "PATH": str(bin_dir), "PYTHONPATH": str(TESTS_DIR)}
    env.pop("SERVEKIT_REQUIRE_HOSTS", None)
    if require:
        env["SERVEKIT_REQUIRE_HOSTS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "hostbench.plugin", "-p", "no:cacheprovider",
         "-rsf", "test_gate.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_hosts_tests_are_skipped_with_the_reason(tmp_path: Path) -> None:
    result = run_without_nspawn(tmp_path, require=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "test hosts unavailable:" in result.stdout


def test_ci_fails_instead_of_skipping(tmp_path: Path) -> None:
    result = run_without_nspawn(tmp_path, require=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout and "skipped" not in result.stdout  # fails in setup
    assert "SERVEKIT_REQUIRE_HOSTS=1 but test hosts cannot run here" in result.stdout
