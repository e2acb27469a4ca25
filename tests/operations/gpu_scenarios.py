"""Hosts for the GPU deploy's operation tests: three releases × the states a GPU host is found in.

Repositories use NVIDIA's package names and version formats for each release (Ubuntu: branch in
the name below 590; Debian: a pinning package and unversioned names), written out here rather
than derived from servekit's policy so that the tests check the policy against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpu_simhost import GpuBoard, Package, SimHost

from servekit.inventory import load_fleet_and_plan

ROOT = Path(__file__).resolve().parents[2]
RECORDED_UBUNTU_2404 = ROOT / "tests/data/gpu-hosts/h200-ubuntu2404/os-release.txt"

DRIVER = "580.95.05"
NEWER_FM = "580.105.08"

RELEASES = {
    "ubuntu2204": (
        'PRETTY_NAME="Ubuntu 22.04.5 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n'
        "VERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\n",
        "5.15.0-91-generic",
    ),
    "ubuntu2404": (
        "\n".join(RECORDED_UBUNTU_2404.read_text().splitlines()[1:-1]),
        "6.8.0-45-generic",
    ),
    "debian12": (
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n',
        "6.1.0-18-amd64",
    ),
}

A100 = {
    "name": "NVIDIA A100-SXM4-80GB",
    "memory_mib": 81920,
    "compute_cap": "8.0",
    "pci_device": "0x20b2",
}


def one_a100() -> GpuBoard:
    return GpuBoard(count=1, **A100)  # type: ignore[arg-type]


def hgx_a100() -> GpuBoard:
    return GpuBoard(count=8, nvswitches=6, **A100)  # type: ignore[arg-type]


def dcgm_packages() -> dict[str, dict[str, list[str]]]:
    names = ["core", "cuda13", "proprietary"]
    dcgm = {f"datacenter-gpu-manager-4-{n}": {"1:4.4.1-1": []} for n in names}
    return {**dcgm, "datacenter-gpu-manager-exporter": {"4.4.1-4.5.2-1": []}}


def fabric_packages() -> dict[str, dict[str, list[str]]]:
    versions = {f"{DRIVER}-1": [], f"{NEWER_FM}-1": []}
    return {"nvidia-fabricmanager": dict(versions), "libnvidia-nscq": dict(versions)}


def ubuntu_repository() -> dict[str, dict[str, list[str]]]:
    v, meta = f"{DRIVER}-0ubuntu1", f"{DRIVER}-1"
    libs = [f"libnvidia-compute-580={v}", f"nvidia-utils-580={v}", f"nvidia-compute-utils-580={v}"]
    return {
        "nvidia-open-580": {meta: [f"nvidia-driver-580-open={v}", f"nvidia-dkms-580-open={v}"]},
        "cuda-drivers-580": {meta: [f"nvidia-driver-580={v}", f"nvidia-dkms-580={v}"]},
        "nvidia-driver-580-open": {v: [*libs, f"nvidia-kernel-common-580={v}"]},
        "nvidia-driver-580": {v: [*libs, f"nvidia-kernel-common-580={v}"]},
        "nvidia-dkms-580-open": {v: [f"nvidia-kernel-common-580={v}", "dkms"]},
        "nvidia-dkms-580": {v: [f"nvidia-kernel-common-580={v}", "dkms"]},
        **{name.partition("=")[0]: {v: []} for name in libs},
        "nvidia-kernel-common-580": {v: []},
        **fabric_packages(),
        **dcgm_packages(),
        "cuda-toolkit-12-8": {"12.8.1-1": []},
    }


def debian_repository() -> dict[str, dict[str, list[str]]]:
    def driver(version: str) -> dict[str, list[str]]:
        return {
            f"{version}-1": [f"nvidia-driver={version}-1", f"nvidia-kernel-open-dkms={version}-1"]
        }

    def leaf(*versions: str) -> dict[str, list[str]]:
        return {f"{version}-1": [] for version in versions}

    return {
        "nvidia-driver-pinning-580": leaf(DRIVER),
        "nvidia-open": driver(DRIVER) | driver("590.44.01"),
        "nvidia-driver": {
            f"{v}-1": [f"nvidia-smi={v}-1", f"libcuda1={v}-1"] for v in (DRIVER, "590.44.01")
        },
        "nvidia-kernel-open-dkms": {f"{v}-1": ["dkms"] for v in (DRIVER, "590.44.01")},
        "nvidia-smi": leaf(DRIVER, "590.44.01"),
        "libcuda1": leaf(DRIVER, "590.44.01"),
        **fabric_packages(),
        **dcgm_packages(),
        "cuda-toolkit-12-8": {"12.8.1-1": []},
    }


def host(release: str, board: GpuBoard | None, **changes: Any) -> SimHost:
    os_release, kernel = RELEASES[release]
    repository = debian_repository() if release == "debian12" else ubuntu_repository()
    archive = {f"linux-headers-{kernel}": {"1": []}, "dkms": {"3.0.10-8": []}}
    return SimHost(os_release, kernel, board, repository, archive, **changes)


def wrong_branch(release: str, board: GpuBoard) -> SimHost:
    """A host with an older driver branch, held: Canonical's 535 server build on Ubuntu, NVIDIA's
    570 on Debian, loaded and running."""
    if release == "debian12":
        v = "570.172.08-1"
        packages = {
            "nvidia-driver-pinning-570": Package(v),
            "nvidia-open": Package(v, held=True),
            "nvidia-driver": Package(v, held=True),
            "nvidia-kernel-open-dkms": Package(v, held=True),
            "nvidia-smi": Package(v, held=True),
            "libcuda1": Package(v, held=True),
        }
        loaded = "570.172.08"
    else:
        v = "535.104.05-0ubuntu0.22.04.1"
        packages = {
            "nvidia-driver-535-server": Package(v, held=True),
            "nvidia-utils-535-server": Package(v, held=True),
            "libnvidia-compute-535-server": Package(v, held=True),
            "linux-modules-nvidia-535-server-generic": Package("5.15.0-91.101"),
        }
        loaded = "535.104.05"
    sim = host(release, board, loaded_driver=loaded)
    sim.packages.update(packages)
    sim.packages[f"linux-headers-{sim.kernel}"] = Package("1")
    return sim


def plan_data(inventory: str, name: str) -> dict[str, Any]:
    _fleet, plan = load_fleet_and_plan(ROOT / "inventories" / inventory)
    return {"servekit": plan.hosts[name].to_host_data()}


def single_a100_data(**gpu_setup: Any) -> dict[str, Any]:
    data = plan_data("single_a100.py", "gpu1")
    data["servekit"]["gpu_setup"].update(gpu_setup)
    return data


def hgx_data(**gpu_setup: Any) -> dict[str, Any]:
    data = plan_data("node_8xa100.py", "hgx1")
    data["servekit"]["gpu_setup"].update(gpu_setup)
    return data
