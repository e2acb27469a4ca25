"""Bench helpers that need no host: inventory files, pyinfra's JSON report, the rootfs recipe."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hostbench import BenchHost, PyinfraRun, write_inventory
from hostbench.pyinfra_run import PYINFRA
from hostbench.rootfs import Recipe, machine_mirrors


def fake_host(octet: int, tmp_path: Path) -> BenchHost:
    return BenchHost(
        name=f"sk-h{octet}",
        address=f"10.231.0.{octet}",
        ssh_key=tmp_path / "id_ed25519",
        root=tmp_path / "root",
        host_dir=tmp_path,
    )


def test_inventory_loads_in_the_pyinfra_cli(tmp_path: Path) -> None:
    a, b = fake_host(11, tmp_path), fake_host(12, tmp_path)
    inventory = write_inventory(
        tmp_path / "inv" / "fleet.py",
        {"web": [a], "db": [b]},
        host_data={b.name: {"ssh_user": "debian", "_sudo": True}},
        group_data={"web": {"web_port": 8080}},
    )
    result = subprocess.run(
        [str(PYINFRA), str(inventory), "debug-inventory", "--json"],
        cwd=inventory.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    hosts = {host["name"]: host for host in json.loads(result.stdout)}
    assert set(hosts) == {"sk-h11", "sk-h12"}
    assert set(hosts["sk-h11"]["groups"]) >= {"web", "fleet"}
    web = hosts["sk-h11"]["data"]
    assert web["ssh_hostname"] == "10.231.0.11" and web["ssh_user"] == "root"
    assert web["ssh_key"] == str(tmp_path / "id_ed25519") and web["web_port"] == 8080
    assert hosts["sk-h12"]["data"]["ssh_user"] == "debian"


REPORT = {
    "plan": [],
    "results": {
        "operations": [
            {"name": "Create user", "success": ["a"], "error": [], "no_change": ["b"]},
            {"name": "Install", "success": [], "error": ["b"], "no_change": ["a"]},
            {"name": "Start", "success": [], "error": [], "no_change": ["a"]},
        ],
        "totals": {"hosts": 5, "success": 1, "error": 1, "no_change": 3},
        "failed_hosts": ["b"],
    },
}


def test_pyinfra_report_changes_and_errors() -> None:
    run = PyinfraRun(["pyinfra"], 1, json.dumps(REPORT), "")
    assert run.changes() == {"Create user": ["a"]}
    assert run.errors() == {"Install": ["b"]}


def test_recipe_key_follows_the_recipe() -> None:
    base = Recipe(mirror="http://m/debian", security_mirror="http://m/debian-security")
    assert (
        base.key() == Recipe(mirror="http://m/debian", security_mirror=base.security_mirror).key()
    )
    assert base.key() != Recipe(mirror="http://other/debian", security_mirror="x").key()
    assert base.key() != Recipe(base.mirror, base.security_mirror, packages=("systemd",)).key()


def test_machine_mirrors_reads_deb822_and_legacy_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    (tmp_path / "sources.list").write_text("deb http://other.example/debian bookworm main\n")
    assert machine_mirrors(tmp_path) == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "sources.list").write_text("deb http://other.example/debian/ bookworm main\n")
    assert machine_mirrors(legacy) == (
        "http://other.example/debian",
        "http://other.example/debian-security",
    )
