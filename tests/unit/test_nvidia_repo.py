"""The stand-in NVIDIA repository the host tests serve: real apt accepts it (signature, indexes,
pins), and its stand-in tools print what servekit's facts parse, in every driver state."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nvidia_repo.standins import (
    DIRECTORY,
    DRIVER,
    NEWER_FABRIC_MANAGER,
    NEXT_BRANCH_DRIVER,
    Repository,
    build_repository,
    hardware,
)

from servekit import cuda_check, nvidia
from servekit.facts.nvidia import FabricState, NvidiaGpus
from servekit.facts.probe import STATUS_PREFIX
from servekit.render import render_template

TOOLS = ("dpkg-deb", "gpg", "gcc", "apt-get", "apt-cache")
HGX = hardware("NVIDIA A100-SXM4-80GB", 8, 81920, "8.0", "0x20b2", nvswitches=6)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, (
        f"building the stand-in repository needs {missing} (apt-get install gcc gnupg)"
    )
    return build_repository(tmp_path_factory.mktemp("nvidia-repo"))


@dataclass
class Apt:
    """apt-get and apt-cache on a private root: sources, preferences, lists, empty dpkg status."""

    root: Path

    def options(self) -> list[str]:
        status = self.root / "var/lib/dpkg/status"
        settings = [
            f"Dir={self.root}",
            f"Dir::State::status={status}",
            "Debug::NoLocking=1",
            "APT::Sandbox::User=root",
        ]
        return [word for setting in settings for word in ("-o", setting)]

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool, *self.options(), *args], capture_output=True, text=True)


def private_apt(base: Path, repository: Repository, key: bytes) -> Apt:
    root = base / "apt"
    for directory in ("etc/apt/sources.list.d", "etc/apt/preferences.d", "var/lib/dpkg"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for directory in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "key.gpg").write_bytes(key)
    (root / "etc/apt/sources.list.d/nvidia.sources").write_text(
        render_template(
            "nvidia-cuda.sources.j2",
            url=f"file://{repository.root}/{DIRECTORY}/",
            keyring=str(root / "key.gpg"),
        )
    )
    return Apt(root)


def test_apt_accepts_the_signed_repository(repository: Repository, tmp_path: Path) -> None:
    apt = private_apt(tmp_path, repository, repository.key.public_key())
    update = apt.run("apt-get", "update")
    assert update.returncode == 0 and "W:" not in update.stderr, update.stderr
    madison = apt.run("apt-cache", "madison", "nvidia-fabricmanager").stdout
    assert f"{NEWER_FABRIC_MANAGER}-1" in madison and f"{DRIVER}-1" in madison


def test_its_keyring_package_passes_its_own_pin_and_fails_nvidias(
    repository: Repository, tmp_path: Path
) -> None:
    """The stand-in cuda-keyring is not NVIDIA's: the catalog's pin refuses it, so the host tests
    pin its own digest (host data `servekit_cuda_keyring_sha256`), and the check is the same."""
    (deb,) = repository.directory.glob("cuda-keyring_*_all.deb")
    assert deb.name == f"cuda-keyring_{nvidia.KEYRING_VERSION}_all.deb"
    url = f"https://mirror.example/{DIRECTORY}/{deb.name}"
    copy = tmp_path / "keyring.deb"
    for pin, ok in (
        (repository.keyring_sha256, True),
        (nvidia.keyring_sha256("debian12", "x86_64"), False),
    ):
        shutil.copy(deb, copy)
        check = nvidia.keyring_verify_command(str(copy), pin, url)
        result = subprocess.run(["sh", "-c", check], capture_output=True, text=True)
        assert (result.returncode == 0) is ok, result.stderr
        assert copy.exists() is ok


def test_apt_refuses_it_without_the_key(repository: Repository, tmp_path: Path) -> None:
    other = tmp_path / "other"
    from nvidia_repo.aptrepo import make_signing_key

    apt = private_apt(tmp_path, repository, make_signing_key(other).public_key())
    update = apt.run("apt-get", "update")
    assert "NO_PUBKEY" in update.stderr or "not signed" in update.stderr, update.stderr


def test_servekit_pin_and_the_pinning_package_as_apt_applies_them(
    repository: Repository, tmp_path: Path
) -> None:
    apt = private_apt(tmp_path, repository, repository.key.public_key())
    assert apt.run("apt-get", "update").returncode == 0
    unpinned = apt.run("apt-cache", "policy", "nvidia-open").stdout
    assert f"Candidate: {NEXT_BRANCH_DRIVER}-1" in unpinned  # the newest branch without a pin
    preferences = apt.root / "etc/apt/preferences.d"
    (preferences / "servekit-nvidia-cuda").write_text(render_template("nvidia-cuda.pref.j2"))
    pinning = repository.directory / f"nvidia-driver-pinning-580_{DRIVER}-1_all.deb"
    subprocess.run(["dpkg-deb", "-x", str(pinning), str(tmp_path / "pin")], check=True)
    shutil.copy(tmp_path / "pin/etc/apt/preferences.d/nvidia-driver-pinning-580", preferences)
    policy = apt.run("apt-cache", "policy", "nvidia-open", "nvidia-fabricmanager").stdout
    assert f"Candidate: {DRIVER}-1" in policy
    assert "600 file:" in policy  # servekit's preference for NVIDIA's repository applies


@dataclass
class StandinHost:
    """A directory that stands for a host's /etc, /proc and /run, and the extracted packages."""

    root: Path
    tools: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SERVEKIT_STANDIN_ROOT": str(self.root),
            "LD_LIBRARY_PATH": str(self.tools),
        }

    def load_module(self, version: str) -> None:
        version_file = self.root / "proc/driver/nvidia/version"
        version_file.parent.mkdir(parents=True, exist_ok=True)
        version_file.write_text(
            f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  "
            "(servekit stand-in)\n"
        )

    def smi(self, *args: str) -> list[str]:
        done = subprocess.run(
            [str(self.tools / "nvidia-smi"), *args], capture_output=True, text=True, env=self.env()
        )
        return [*done.stdout.splitlines(), f"{STATUS_PREFIX}{done.returncode}"]

    def cuda(self) -> dict[str, object]:
        script = Path(cuda_check.__file__)
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=self.env()
        )
        result: dict[str, object] = json.loads(done.stdout)
        return result


@pytest.fixture
def standin(repository: Repository, tmp_path: Path) -> Iterator[StandinHost]:
    tools = tmp_path / "tools"
    for package in ("nvidia-smi", "libcuda1"):
        extracted = tmp_path / package
        deb = repository.directory / f"{package}_{DRIVER}-1_amd64.deb"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
        for file in extracted.rglob("*"):
            if file.is_file():
                tools.mkdir(exist_ok=True)
                shutil.copy(file, tools / file.name)
    root = tmp_path / "root"
    (root / "etc/servekit-test").mkdir(parents=True)
    (root / "etc/servekit-test/hardware").write_text(HGX)
    yield StandinHost(root, tools)


def test_standins_without_a_loaded_module(standin: StandinHost) -> None:
    assert NvidiaGpus().process(standin.smi("--query-gpu=x"))["state"] == "no_driver"
    result = standin.cuda()
    assert result["ok"] is False and result["error_code"] == 100


def test_standins_with_the_driver_loaded(standin: StandinHost) -> None:
    standin.load_module(DRIVER)
    query = NvidiaGpus().command().split("then ", 1)[1].split(" 2>&1", 1)[0].split()[1:]
    gpus = NvidiaGpus().process(standin.smi(*query))
    assert gpus["state"] == "ok" and len(gpus["gpus"]) == 8
    assert {g["persistence"] for g in gpus["gpus"]} == {False}
    assert {g["state"] for g in FabricState().process(standin.smi("-q"))} == {"In Progress"}
    cuda = standin.cuda()
    assert cuda["error_code"] == 802  # NVSwitches, no Fabric Manager
    (standin.root / "run/nvidia-fabricmanager").mkdir(parents=True)
    (standin.root / "run/nvidia-fabricmanager/running").touch()
    assert {g["state"] for g in FabricState().process(standin.smi("-q"))} == {"Completed"}
    standin.smi("-pm", "1")
    assert {g["persistence"] for g in NvidiaGpus().process(standin.smi(*query))["gpus"]} == {True}
    cuda = standin.cuda()
    assert cuda["ok"] is True and cuda["devices"] == 8


def test_standins_with_a_module_of_another_version(standin: StandinHost) -> None:
    standin.load_module("580.82.07")
    assert NvidiaGpus().process(standin.smi("--query-gpu=x"))["state"] == "mismatch"
    assert standin.cuda()["error_code"] == 803
