"""Stand-in packages under the names and versions NVIDIA's debian12 repository uses, and the repo.

What they install behaves like the real thing where servekit looks (see files/): `nvidia-smi`,
`nvidia-persistenced`, `nv-fabricmanager` and `libcuda.so.1` answer for the GPUs described in
/etc/servekit-test/hardware, and the "DKMS module" is loaded at boot by a unit that writes what
nvidia.ko writes to /proc. The driver exists at 580.95.05 and 590.44.01 (the branch pinning must
keep 580), Fabric Manager and NSCQ at 580.95.05 and a newer 580.105.08 (servekit must pick the
driver's). `linux-headers-<running kernel>` is here too: the bench's kernel has none in Debian.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nvidia_repo.aptrepo import Deb, DebFile, SigningKey, build_deb, make_signing_key, write_index

FILES = Path(__file__).parent / "files"
DRIVER = "580.95.05"
NEXT_BRANCH_DRIVER = "590.44.01"
NEWER_FABRIC_MANAGER = "580.105.08"
DIRECTORY = "debian12/x86_64"
KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"
HARDWARE = Path("/etc/servekit-test/hardware")


def _text(name: str, **values: str) -> bytes:
    text = (FILES / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text.encode()


def libcuda_library(version: str, work: Path) -> bytes:
    """The test libcuda.so.1 of driver `version` (tests/nvidia_repo/files/libcuda.c), built."""
    out = work / f"libcuda-{version}.so.1"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", f'-DVERSION="{version}"', "-o", str(out),
         str(FILES / "libcuda.c")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return out.read_bytes()


def driver_packages(version: str, work: Path) -> list[Deb]:
    """One driver release: metapackage, driver, module, tools, library and daemon."""
    v = f"{version}-1"
    exact = lambda name: f"{name} (= {v})"  # noqa: E731
    unit_dir = "/usr/lib/systemd/system"
    return [
        Deb("nvidia-open", v, depends=[exact("nvidia-driver"), exact("nvidia-kernel-open-dkms")]),
        Deb("cuda-drivers", v, depends=[exact("nvidia-driver"), exact("nvidia-kernel-open-dkms")]),
        Deb(
            "nvidia-driver",
            v,
            depends=[exact("nvidia-smi"), exact("libcuda1"), exact("nvidia-persistenced")],
        ),
        Deb(
            "nvidia-kernel-open-dkms",
            v,
            files=[
                DebFile(
                    "/usr/lib/servekit-standin/load-nvidia-module",
                    _text("load-nvidia-module", VERSION=version),
                    0o755,
                ),
                DebFile(
                    f"{unit_dir}/servekit-standin-nvidia-module.service",
                    _text("servekit-standin-nvidia-module.service"),
                ),
                DebFile(
                    f"{unit_dir}/sysinit.target.wants/servekit-standin-nvidia-module.service",
                    link="../servekit-standin-nvidia-module.service",
                ),
            ],
        ),
        Deb(
            "nvidia-smi",
            v,
            files=[DebFile("/usr/bin/nvidia-smi", _text("nvidia-smi", VERSION=version), 0o755)],
        ),
        Deb(
            "libcuda1",
            v,
            files=[
                DebFile(
                    "/usr/lib/x86_64-linux-gnu/libcuda.so.1", libcuda_library(version, work), 0o755
                )
            ],
            postinst="ldconfig",
        ),
        Deb(
            "nvidia-persistenced",
            v,
            files=[
                DebFile("/usr/bin/nvidia-persistenced", _text("nvidia-persistenced"), 0o755),
                DebFile(
                    f"{unit_dir}/nvidia-persistenced.service", _text("nvidia-persistenced.service")
                ),
            ],
        ),
    ]


def fabric_manager_packages(version: str) -> list[Deb]:
    v = f"{version}-1"
    return [
        Deb(
            "nvidia-fabricmanager",
            v,
            files=[
                DebFile(
                    "/usr/bin/nv-fabricmanager", _text("nv-fabricmanager", VERSION=version), 0o755
                ),
                DebFile(
                    "/usr/share/nvidia/nvswitch/fabricmanager.cfg", b"# stand-in\n", conffile=True
                ),
                DebFile(
                    "/usr/lib/systemd/system/nvidia-fabricmanager.service",
                    _text("nvidia-fabricmanager.service"),
                ),
            ],
        ),
        Deb(
            "libnvidia-nscq",
            v,
            files=[DebFile(f"/usr/lib/x86_64-linux-gnu/libnvidia-nscq.so.{version}", b"stand-in")],
        ),
    ]


def keyring_package(key: SigningKey) -> Deb:
    """cuda-keyring 1.1-1: the key, and a source list naming NVIDIA's real repository (as the
    real package does; servekit replaces it with one naming the mirror)."""
    real = f"https://developer.download.nvidia.com/compute/cuda/repos/{DIRECTORY}/"
    return Deb(
        "cuda-keyring",
        "1.1-1",
        architecture="all",
        files=[
            DebFile(KEYRING, key.public_key()),
            DebFile(
                f"/etc/apt/sources.list.d/cuda-{DIRECTORY.replace('/', '-')}.list",
                f"deb [signed-by={KEYRING}] {real} /\n".encode(),
                conffile=True,
            ),
        ],
    )


def pinning_package(branch: int, version: str) -> Deb:
    """nvidia-driver-pinning-<branch>: keeps apt on the branch (stand-in preferences)."""
    names = ["nvidia-open", "cuda-drivers", "nvidia-driver", "nvidia-kernel-open-dkms"]
    packages = " ".join([*names, "nvidia-smi", "libcuda1", "nvidia-persistenced"])
    preferences = f"Package: {packages}\nPin: version {branch}.*\nPin-Priority: 1000\n"
    return Deb(
        f"nvidia-driver-pinning-{branch}",
        f"{version}-1",
        architecture="all",
        files=[
            DebFile(f"/etc/apt/preferences.d/nvidia-driver-pinning-{branch}", preferences.encode())
        ],
    )


def toolkit_package() -> Deb:
    return Deb(
        "cuda-toolkit-12-8",
        "12.8.93-1",
        files=[
            DebFile(
                "/usr/local/cuda-12.8/bin/nvcc",
                _text("nvcc", VERSION="12.8.93", RELEASE="12.8"),
                0o755,
            ),
            DebFile("/usr/local/cuda", link="cuda-12.8"),
        ],
    )


def headers_package(kernel: str) -> Deb:
    return Deb(
        f"linux-headers-{kernel}",
        "1.0-servekit1",
        files=[DebFile(f"/usr/src/linux-headers-{kernel}/Makefile", b"# stand-in\n")],
    )


@dataclass
class Repository:
    """A built repository: serve `root` (it holds `debian12/x86_64/`) and point servekit at it."""

    root: Path
    key: SigningKey

    @property
    def directory(self) -> Path:
        return self.root / DIRECTORY

    @property
    def keyring_sha256(self) -> str:
        """The sha256 of this repository's own cuda-keyring .deb (signed with the test key, so not
        NVIDIA's): a test fleet pins it with the host data `servekit_cuda_keyring_sha256`."""
        (deb,) = self.directory.glob("cuda-keyring_*_all.deb")
        return hashlib.sha256(deb.read_bytes()).hexdigest()


def build_repository(work: Path, kernel: str | None = None) -> Repository:
    """The whole stand-in repository under `work/repos`, signed with a new key."""
    key = make_signing_key(work / "gnupg")
    repo = work / "repos" / DIRECTORY
    repo.mkdir(parents=True)
    build = work / "build"
    build.mkdir()
    debs = [keyring_package(key), pinning_package(580, DRIVER), toolkit_package()]
    debs.append(headers_package(kernel or platform.release()))
    for version in (DRIVER, NEXT_BRANCH_DRIVER):
        debs += driver_packages(version, build)
    for version in (DRIVER, NEWER_FABRIC_MANAGER):
        debs += fabric_manager_packages(version)
    for deb in debs:
        build_deb(deb, repo, build)
    write_index(repo)
    key.sign(repo)
    shutil.rmtree(build)
    return Repository(work / "repos", key)


def hardware(
    gpu_name: str, count: int, memory_mib: int, compute_cap: str, pci_device: str, nvswitches: int
) -> str:
    """/etc/servekit-test/hardware: the GPUs the stand-ins (and the fake PCI bus) show."""
    return (
        f'GPU_NAME="{gpu_name}"\nGPU_COUNT={count}\nGPU_MEMORY_MIB={memory_mib}\n'
        f"GPU_COMPUTE_CAP={compute_cap}\nGPU_PCI_DEVICE={pci_device}\nNVSWITCHES={nvswitches}\n"
    )


def install_hardware(root: Path, description: str) -> None:
    """Give a test host (its root filesystem) GPUs: the config, the script and its boot unit."""
    (root / "etc/servekit-test").mkdir(parents=True, exist_ok=True)
    (root / "etc/servekit-test/hardware").write_text(description)
    script = root / "usr/local/sbin/servekit-test-hardware"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_bytes(_text("servekit-test-hardware"))
    script.chmod(0o755)
    units = root / "etc/systemd/system"
    (units / "servekit-test-hardware.service").write_bytes(_text("servekit-test-hardware.service"))
    wants = units / "sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "servekit-test-hardware.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/servekit-test-hardware.service")
