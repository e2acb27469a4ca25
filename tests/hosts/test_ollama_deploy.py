"""deploys/ollama.py on a real Debian 12 host, over SSH as the image's sudo user, with the stand-in
Ollama released on the bench's file server (a mirror of GitHub's release layout).

One host serves Ollama and another one tries to reach it. The tests share both hosts and build on
each other's state in file order (install → prune → upgrade → corrupt release → failed pull); each
first converges the host to the state it starts from, so a test run alone proves the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from hostbench import BenchHost, FileServer, PyinfraRun, run_pyinfra
from hostbench.plugin import HostFactory
from standins.build import build_ollama_release, ollama_asset_name

pytestmark = pytest.mark.hosts

DEPLOY = Path(__file__).resolve().parents[2] / "deploys" / "ollama.py"
OLD, NEW, CORRUPT = "0.31.0", "0.32.3", "0.32.4"
API = "http://127.0.0.1:11434"
MODELS_DIR = "/var/lib/ollama/models"


@pytest.fixture(scope="module")
def mirror(file_server: FileServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three stand-in releases; CORRUPT's archive no longer matches its sha256sum.txt."""
    out = tmp_path_factory.mktemp("releases")
    for version in (OLD, NEW, CORRUPT):
        build_ollama_release(out, version)
    archive = out / f"v{CORRUPT}" / ollama_asset_name(CORRUPT)
    archive.write_bytes(archive.read_bytes() + b"tampered")
    return file_server.add_tree(out, "ollama-releases")


@pytest.fixture(scope="module")
def hosts(test_hosts: HostFactory) -> tuple[BenchHost, BenchHost]:
    server, other = test_hosts(2)
    return server, other


def write_fleet(
    path: Path,
    server: BenchHost,
    mirror: str,
    version: str,
    models: Sequence[str],
    prune: bool = False,
) -> Path:
    """A servekit inventory (as a user writes one) for `server`, reached as the sudo user."""
    serves = ", ".join(f'Serve(model="{m}", engine="ollama")' for m in models)
    path.parent.mkdir(parents=True, exist_ok=True)
    known_hosts = path.with_suffix(".known_hosts")
    known_hosts.touch()
    path.write_text(
        f'''"""Ollama on a bench host (written by {Path(__file__).name})."""
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, OllamaSettings, Serve, Sources, SshHost, Versions

fleet = Fleet(
    name="ollama-bench",
    machines=[
        SshHost(
            name="{server.name}",
            address="{server.address}",
            ssh_user="debian",
            ssh_key="{server.ssh_key}",
        )
    ],
    serve=[{serves}],
    ollama=OllamaSettings(prune={prune}, keep_alive="30m"),
    sources=Sources(ollama_releases="{mirror}"),
    versions=Versions(ollama="{version}"),
)
_groups = pyinfra_groups(fleet)
for _name, _data in _groups.ollama:
    _data["ssh_known_hosts_file"] = "{known_hosts}"
gpu, vllm, ollama, gateway, monitoring = _groups
'''
    )
    return path


def deploy(
    tmp_path: Path,
    server: BenchHost,
    mirror: str,
    version: str,
    models: Sequence[str],
    prune: bool = False,
) -> PyinfraRun:
    inventory = write_fleet(tmp_path / "fleet.py", server, mirror, version, models, prune)
    return run_pyinfra(inventory, DEPLOY, timeout=900)


def converge(
    tmp_path: Path, server: BenchHost, mirror: str, version: str, models: Sequence[str]
) -> None:
    """Bring the host to a known state: this version, exactly these models."""
    deploy(tmp_path / "setup", server, mirror, version, models, prune=True).check()


def failed_step(run: PyinfraRun) -> str:
    """The operation that stopped a run's only host (pyinfra prints no JSON report then)."""
    assert run.returncode != 0 and "No hosts remaining" in run.stderr, run
    started = re.findall(r"--> Starting operation: (.+?) *\n", run.stderr)
    assert started, run
    return started[-1]


def api(host: BenchHost, path: str) -> object:
    return json.loads(host.run(f"curl -fsS --max-time 10 {API}{path}").stdout)


def model_names(host: BenchHost) -> set[str]:
    tags = api(host, "/api/tags")
    assert isinstance(tags, dict)
    return {m["name"] for m in tags["models"]}


def served_version(host: BenchHost) -> str:
    answer = api(host, "/api/version")
    assert isinstance(answer, dict)
    return str(answer["version"])


def main_pid(host: BenchHost) -> int:
    return int(host.run("systemctl show -p MainPID --value ollama.service").stdout)


def test_install_serves_the_models_on_loopback_and_a_second_run_changes_nothing(
    hosts: tuple[BenchHost, BenchHost], mirror: str, tmp_path: Path
) -> None:
    server, other = hosts
    first = deploy(tmp_path / "first", server, mirror, OLD, ["llama3.2:1b", "tinyllama"]).check()
    changed = first.changes()
    for step in ("Install curl and zstd", f"Install Ollama {OLD}", "Install ollama.service"):
        assert server.name in changed.get(f"Ollama | {step}", []), first
    assert server.name in changed["Ollama | Sync the fleet's models"], first
    # Progress of each pull was shown while it ran, and said where the settings came from.
    assert re.search(r"llama3\.2:1b: pulling [0-9a-f]{12} 100% of", first.stderr), first
    assert "tinyllama:latest: success" in first.stderr, first
    assert "settings from the inventory's servekit host data" in first.stderr, first

    assert server.run("systemctl is-active ollama.service").stdout.strip() == "active"
    assert server.run("systemctl is-enabled ollama.service").stdout.strip() == "enabled"
    owner = server.run(f"ps -o user= -p {main_pid(server)}").stdout.strip()
    assert owner == "ollama"
    assert served_version(server) == OLD
    assert model_names(server) == {"llama3.2:1b", "tinyllama:latest"}
    manifest = f"{MODELS_DIR}/manifests/registry.ollama.ai/library/llama3.2/1b"
    assert server.run(f"stat -c '%U' {manifest}").stdout.strip() == "ollama"
    assert server.run("/usr/local/bin/ollama --version").stdout.startswith(
        f"ollama version is {OLD}"
    )
    assert server.run("test -f /usr/local/lib/ollama/libggml-base.so", check=False).returncode == 0

    # The settings reached the server (it logs them), and the unit is hardened.
    journal = server.run("journalctl -u ollama.service --no-pager -o cat").stdout
    assert "OLLAMA_KEEP_ALIVE:30m0s" in journal and "OLLAMA_NO_CLOUD:true" in journal
    shown = server.run(
        "systemctl show ollama.service -p ProtectSystem -p DevicePolicy -p NoNewPrivileges "
        "-p ProtectHome -p PrivateTmp -p User"
    ).stdout.split()
    assert set(shown) >= {
        "ProtectSystem=strict",
        "DevicePolicy=closed",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "User=ollama",
    }
    # The host's own systemd scores the unit as loaded (servekit/systemd.py's hardening).
    out = server.run("systemd-analyze security ollama.service").stdout
    score = out.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0]
    assert float(score) <= 2.5, out[-2000:]
    # Ollama listens on loopback only: the other host cannot connect.
    listening = server.run("ss -Hltn 'sport = :11434'").stdout.split()
    assert "127.0.0.1:11434" in listening, listening
    reach = other.run(
        "python3 -c \"import socket; socket.create_connection(('"
        + server.address
        + "', 11434), timeout=5)\"",
        check=False,
    )
    assert reach.returncode != 0 and "ConnectionRefusedError" in reach.stderr, reach

    second = deploy(tmp_path / "second", server, mirror, OLD, ["llama3.2:1b", "tinyllama"])
    second.check()
    assert second.changes() == {}, second
    totals = second.report["results"]["totals"]
    assert totals["no_change"] == totals["hosts"] > 10 and totals["success"] == 0, second


def test_prune_deletes_models_the_fleet_does_not_declare(
    hosts: tuple[BenchHost, BenchHost], mirror: str, tmp_path: Path
) -> None:
    server, _ = hosts
    converge(tmp_path, server, mirror, OLD, ["llama3.2:1b", "tinyllama"])
    # Someone pulled a model by hand.
    server.run(f'curl -fsS --max-time 60 {API}/api/pull -d \'{{"model": "qwen2.5:0.5b"}}\'')
    assert "qwen2.5:0.5b" in model_names(server)

    kept = deploy(tmp_path / "keep", server, mirror, OLD, ["llama3.2:1b"]).check()
    assert kept.changes() == {}, kept  # without prune, extra models stay
    pruned = deploy(tmp_path / "prune", server, mirror, OLD, ["llama3.2:1b"], prune=True).check()
    assert set(pruned.changes()) == {"Ollama | Sync the fleet's models"}, pruned
    assert model_names(server) == {"llama3.2:1b"}
    blobs = server.run(f"ls {MODELS_DIR}/blobs | wc -l").stdout.strip()
    assert int(blobs) == 5  # one model left: four layers and its config
    again = deploy(tmp_path / "again", server, mirror, OLD, ["llama3.2:1b"], prune=True).check()
    assert again.changes() == {}, again


def test_upgrade_replaces_the_binary_restarts_and_keeps_the_models(
    hosts: tuple[BenchHost, BenchHost], mirror: str, tmp_path: Path
) -> None:
    server, _ = hosts
    converge(tmp_path, server, mirror, OLD, ["llama3.2:1b"])
    before = main_pid(server)

    upgrade = deploy(tmp_path / "upgrade", server, mirror, NEW, ["llama3.2:1b"]).check()
    changed = upgrade.changes()
    assert server.name in changed[f"Ollama | Install Ollama {NEW}"], upgrade
    assert server.name in changed["Ollama | Restart Ollama after a change"], upgrade
    assert "Ollama | Sync the fleet's models" not in changed, upgrade  # nothing pulled again
    assert served_version(server) == NEW
    assert main_pid(server) != before
    assert model_names(server) == {"llama3.2:1b"}
    assert server.run("ls /usr/local/lib").stdout.split().count("ollama.old") == 0

    again = deploy(tmp_path / "again", server, mirror, NEW, ["llama3.2:1b"]).check()
    assert again.changes() == {}, again


def test_a_release_that_fails_its_checksum_is_refused_and_the_server_keeps_running(
    hosts: tuple[BenchHost, BenchHost], mirror: str, tmp_path: Path
) -> None:
    server, _ = hosts
    converge(tmp_path, server, mirror, NEW, ["llama3.2:1b"])
    before = main_pid(server)

    refused = deploy(tmp_path / "corrupt", server, mirror, CORRUPT, ["llama3.2:1b"])
    assert failed_step(refused) == f"Ollama | Install Ollama {CORRUPT}", refused
    assert "refusing" in refused.stderr and "sha256" in refused.stderr, refused
    assert served_version(server) == NEW
    assert main_pid(server) == before
    assert server.run("/usr/local/bin/ollama --version").stdout.startswith(
        f"ollama version is {NEW}"
    )
    leftovers = server.run("ls /var/tmp").stdout.split()
    assert not [name for name in leftovers if name.startswith("servekit-ollama")], leftovers


def test_a_failed_pull_fails_the_run_and_names_the_model(
    hosts: tuple[BenchHost, BenchHost], mirror: str, tmp_path: Path
) -> None:
    server, _ = hosts
    converge(tmp_path, server, mirror, NEW, ["llama3.2:1b"])

    failed = deploy(tmp_path / "unknown", server, mirror, NEW, ["llama3.2:1b", "nosuch:7b"])
    assert failed_step(failed) == "Ollama | Sync the fleet's models", failed
    assert "could not pull model 'nosuch:7b': pull model manifest: file does not exist" in (
        failed.stderr
    ), failed
    assert model_names(server) == {"llama3.2:1b"}
