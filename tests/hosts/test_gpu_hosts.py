"""`deploys/gpu.py` on real Debian 12 hosts over SSH, from a stand-in of NVIDIA's repository
served on the bridge (tests/nvidia_repo): repository and key, the branch installed and held
against `apt-get upgrade` and unattended-upgrades, Fabric Manager at the driver's exact version
while a newer one is in the repository, nouveau, the reboot, verification, and a second run that
changes nothing.

Two hosts: `hgx` has 8 × A100-SXM4-80GB and six NVSwitches, `single` one A100. Their GPUs exist
for the stand-ins only: a test unit puts them on the PCI bus (sysfs), and the stand-in driver
"loads its module" at boot (tests/nvidia_repo/files).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hostbench import BenchHost, FileServer, PyinfraRun, run_pyinfra, write_inventory
from hostbench.plugin import HostFactory
from nvidia_repo.standins import (
    DRIVER,
    NEWER_FABRIC_MANAGER,
    NEXT_BRANCH_DRIVER,
    Repository,
    build_repository,
    hardware,
    install_hardware,
)

from servekit.nvidia import KEYRING_SHA256_DATA_KEY
from servekit.placement import plan_fleet
from servekit.render import GPU_PATHS
from servekit.spec import Fleet, Gpu, GpuSetup, Sources, SshHost

pytestmark = pytest.mark.hosts

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploys/gpu.py"
A100 = ("NVIDIA A100-SXM4-80GB", 81920, "8.0", "0x20b2")
DRIVER_PACKAGES = [
    "nvidia-driver-pinning-580",
    "nvidia-open",
    "nvidia-driver",
    "nvidia-kernel-open-dkms",
    "nvidia-smi",
    "libcuda1",
    "nvidia-persistenced",
]
FABRIC_PACKAGES = ["nvidia-fabricmanager", "libnvidia-nscq"]


@dataclass
class GpuBench:
    hgx: BenchHost
    single: BenchHost
    inventory: Path
    mirror: str
    runs: list[PyinfraRun] = field(default_factory=list)
    timings: list[str] = field(default_factory=list)
    boots_before: dict[str, str] = field(default_factory=dict)

    @property
    def hosts(self) -> list[BenchHost]:
        return [self.hgx, self.single]

    def deploy(self, label: str) -> PyinfraRun:
        started = time.monotonic()
        run = run_pyinfra(self.inventory, DEPLOY)
        self.timings.append(f"{label}: {time.monotonic() - started:.1f} s")
        self.runs.append(run)
        return run


@pytest.fixture(scope="module")
def nvidia_repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return build_repository(tmp_path_factory.mktemp("nvidia-repo"))


@pytest.fixture(scope="module")
def nvidia_mirror(file_server: FileServer, nvidia_repository: Repository) -> str:
    """NVIDIA's repository as a mirror on the bridge: servekit only gets this URL (and the pin of
    its stand-in cuda-keyring package, which is not NVIDIA's)."""
    file_server.add_tree(nvidia_repository.root, "compute/cuda/repos")
    return file_server.url_for("compute/cuda/repos")


@pytest.fixture(scope="module")
def gpu_bench(
    test_hosts: HostFactory,
    nvidia_mirror: str,
    nvidia_repository: Repository,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GpuBench]:
    hgx, single = test_hosts(2, fresh=True)
    install_hardware(hgx.root, hardware(*A100[:1], 8, *A100[1:], nvswitches=6))
    install_hardware(single.root, hardware(*A100[:1], 1, *A100[1:], nvswitches=0))
    for host in (hgx, single):
        host.run("systemctl daemon-reload && systemctl start servekit-test-hardware.service")
    fleet = Fleet(
        name="gpu-bench",
        machines=[
            SshHost(name=hgx.name, address=hgx.address, gpu=Gpu(model="A100-SXM4-80GB", count=8)),
            SshHost(name=single.name, address=single.address, gpu=Gpu(model="A100", count=1)),
        ],
        sources=Sources(nvidia_apt=nvidia_mirror),
        gpu_setup=GpuSetup(cuda_toolkit="12.8", reboot_batch=1),
    )
    plans = plan_fleet(fleet).hosts
    inventory = write_inventory(
        tmp_path_factory.mktemp("gpu-inventory") / "inventory.py",
        {"gpu": [hgx, single]},
        host_data={
            h.name: {
                "servekit": plans[h.name].to_host_data(),
                KEYRING_SHA256_DATA_KEY: nvidia_repository.keyring_sha256,
            }
            for h in (hgx, single)
        },
    )
    bench = GpuBench(hgx, single, inventory, nvidia_mirror)
    yield bench
    print("\n".join(["", "GPU host deploy timings:", *bench.timings]))


def sh(host: BenchHost, command: str) -> str:
    return host.run(command).stdout


def test_first_run_installs_reboots_once_and_verifies(gpu_bench: GpuBench) -> None:
    for host in gpu_bench.hosts:
        gpu_bench.boots_before[host.name] = host.boot_id()
        assert "NVIDIA" not in sh(host, "dpkg -l")
    run = gpu_bench.deploy("first run (2 hosts, install + reboot)").check()
    changes = run.changes()
    both = sorted(h.name for h in gpu_bench.hosts)
    assert sorted(changes["NVIDIA GPU host | Reboot to load the new driver"]) == both
    assert changes["NVIDIA GPU host | Install Fabric Manager and NSCQ at the driver's version"] == [
        gpu_bench.hgx.name
    ]
    for host in gpu_bench.hosts:
        assert host.boot_id() != gpu_bench.boots_before[host.name]
        assert f"  {DRIVER}  " in sh(host, "cat /proc/driver/nvidia/version")
    assert not run.errors()  # the verification step passed on both hosts


def test_repository_and_key_are_configured(gpu_bench: GpuBench) -> None:
    host = gpu_bench.hgx
    sources = sh(host, f"cat {GPU_PATHS.sources}")
    assert f"URIs: {gpu_bench.mirror}/debian12/x86_64/" in sources
    assert "Signed-By: /usr/share/keyrings/cuda-archive-keyring.gpg" in sources
    assert "deb [signed-by" not in sh(host, "cat /etc/apt/sources.list.d/*.list 2>/dev/null; true")
    assert "cuda-keyring\t1.1-1" in sh(host, "dpkg-query -W cuda-keyring")
    policy = sh(host, "apt-cache policy nvidia-open")
    assert f"600 {gpu_bench.mirror}/debian12/x86_64  Packages" in policy, policy


def test_branch_is_installed_and_held(gpu_bench: GpuBench) -> None:
    for host in gpu_bench.hosts:
        versions = sh(host, "dpkg-query -W " + " ".join(DRIVER_PACKAGES[1:]))
        assert versions.count(f"\t{DRIVER}-1") == len(DRIVER_PACKAGES) - 1, versions
        held = set(sh(host, "apt-mark showhold").split())
        assert set(DRIVER_PACKAGES) <= held
    assert set(FABRIC_PACKAGES) <= set(sh(gpu_bench.hgx, "apt-mark showhold").split())


def test_fabric_manager_matches_the_driver_though_a_newer_one_is_offered(
    gpu_bench: GpuBench,
) -> None:
    host = gpu_bench.hgx
    offered = sh(host, "apt-cache madison nvidia-fabricmanager")
    assert f"{NEWER_FABRIC_MANAGER}-1" in offered
    assert sh(host, "dpkg-query -W -f='${Version}' nvidia-fabricmanager libnvidia-nscq") == (
        f"{DRIVER}-1{DRIVER}-1"
    )
    assert sh(
        host, "systemctl is-enabled nvidia-fabricmanager; systemctl is-active nvidia-fabricmanager"
    ).split() == [
        "enabled",
        "active",
    ]
    assert "nvidia-fabricmanager" not in sh(gpu_bench.single, "dpkg -l | grep fabric || true")


def test_persistence_mode_from_boot_and_the_gpus_answer(gpu_bench: GpuBench) -> None:
    for host, count in ((gpu_bench.hgx, 8), (gpu_bench.single, 1)):
        exec_start = sh(host, "systemctl show -p ExecStart --value nvidia-persistenced")
        assert "--persistence-mode" in exec_start and "--no-persistence-mode" not in exec_start
        assert sh(host, "systemctl is-active nvidia-persistenced").strip() == "active"
        query = sh(host, "nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version,"
                   "compute_cap,pci.bus_id,persistence_mode,mig.mode.current "
                   "--format=csv,noheader,nounits")  # fmt: skip
        rows = query.splitlines()
        assert len(rows) == count and all(", Enabled, " in row for row in rows)
    fabric = sh(gpu_bench.hgx, "nvidia-smi -q | grep -A1 '^    Fabric' | grep State")
    assert fabric.count("Completed") == 8


def test_nouveau_is_blacklisted_and_toolkit_on_path(gpu_bench: GpuBench) -> None:
    host = gpu_bench.hgx
    assert "blacklist nouveau" in sh(host, "cat /etc/modprobe.d/*.conf")
    assert "release 12.8" in sh(host, "bash -lc 'nvcc --version'")


def test_apt_upgrade_does_not_move_the_driver(gpu_bench: GpuBench) -> None:
    host = gpu_bench.hgx
    policy = sh(host, "apt-cache policy nvidia-open nvidia-fabricmanager")
    assert f"Candidate: {DRIVER}-1" in policy  # the pinning package keeps nvidia-open on 580
    assert f"{NEXT_BRANCH_DRIVER}-1" in policy  # though 590 is offered
    assert f"Candidate: {NEWER_FABRIC_MANAGER}-1" in policy  # only the hold keeps this one
    sh(host, "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -y -q upgrade")
    installed = sh(host, "dpkg-query -W nvidia-open nvidia-fabricmanager")
    assert installed.split() == [
        "nvidia-fabricmanager",
        f"{DRIVER}-1",
        "nvidia-open",
        f"{DRIVER}-1",
    ]


def test_unattended_upgrades_leave_nvidia_packages_alone(gpu_bench: GpuBench) -> None:
    """With NVIDIA's repository among unattended-upgrades' origins and the holds released, only
    servekit's blacklist keeps Fabric Manager from moving; without it, it would move."""
    host = gpu_bench.hgx
    sh(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q unattended-upgrades")
    origins = 'Unattended-Upgrade::Origins-Pattern { "origin=NVIDIA"; };'
    sh(host, f"echo '{origins}' > /etc/apt/apt.conf.d/52servekit-test-origins")
    sh(host, "apt-mark unhold " + " ".join(FABRIC_PACKAGES))
    dry_run = "unattended-upgrade --dry-run --debug 2>&1"
    try:
        guarded = sh(host, dry_run)
        sh(host, f"mv {GPU_PATHS.unattended_upgrades} /root/servekit-blacklist.off")
        unguarded = sh(host, dry_run)
    finally:
        sh(host, f"mv /root/servekit-blacklist.off {GPU_PATHS.unattended_upgrades} || true")
        sh(host, "rm -f /etc/apt/apt.conf.d/52servekit-test-origins")
        sh(host, "apt-mark hold " + " ".join(FABRIC_PACKAGES))
    upgraded = lambda output: next(  # noqa: E731
        (line for line in output.splitlines() if line.startswith("Packages that will be upgraded")),
        "",
    )
    assert "nvidia-fabricmanager" in upgraded(unguarded), unguarded[-3000:]
    assert "nvidia-fabricmanager" not in upgraded(guarded), guarded[-3000:]
    assert sh(host, "dpkg-query -W -f='${Version}' nvidia-fabricmanager") == f"{DRIVER}-1"


def test_second_run_changes_nothing(gpu_bench: GpuBench) -> None:
    boots = {host.name: host.boot_id() for host in gpu_bench.hosts}
    run = gpu_bench.deploy("second run (2 hosts, no change)").check()
    assert run.changes() == {}, run.changes()
    assert not run.errors()
    assert {host.name: host.boot_id() for host in gpu_bench.hosts} == boots
