"""The driver's packages: which ones install a branch and flavour, which installed ones belong
to another branch or source, version matching for Fabric Manager, the CUDA toolkit and DCGM."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from servekit import catalog
from servekit.nvidia.shapes import InstalledPackage

Flavour = Literal["open", "proprietary"]

OPEN_MODULES_FROM = (7, 5)  # Turing; older GPUs (Volta and before) need the proprietary modules
UNVERSIONED_FROM = 590  # Ubuntu drops the branch from package names; a pinning package holds it
FM_UNVERSIONED_FROM = 580  # nvidia-fabricmanager / libnvidia-nscq without the branch suffix


def flavour_for(compute_capability: tuple[int, int] | None) -> Flavour:
    """Open kernel modules for Turing and newer (and when unknown); proprietary before Turing."""
    if compute_capability is None or compute_capability >= OPEN_MODULES_FROM:
        return "open"
    return "proprietary"


@dataclass(frozen=True)
class DriverChoice:
    """The packages that install one driver branch and flavour from NVIDIA's repository."""

    branch: int
    flavour: Flavour
    directory: str

    @property
    def versioned_names(self) -> bool:
        return self.directory.startswith("ubuntu") and self.branch < UNVERSIONED_FROM

    @property
    def pinning(self) -> str | None:
        """NVIDIA's package that pins apt to the branch, installed before the driver."""
        return None if self.versioned_names else f"nvidia-driver-pinning-{self.branch}"

    @property
    def metapackage(self) -> str:
        base = "nvidia-open" if self.flavour == "open" else "cuda-drivers"
        return f"{base}-{self.branch}" if self.versioned_names else base

    @property
    def other_flavour_metapackage(self) -> str:
        other = DriverChoice(self.branch, flavour_other(self.flavour), self.directory)
        return other.metapackage

    @property
    def packages(self) -> list[str]:
        """What to install, in order: the pinning package first where there is one."""
        return [p for p in (self.pinning, self.metapackage) if p]

    @property
    def fabricmanager(self) -> str:
        fm = "nvidia-fabricmanager"
        return fm if self.branch >= FM_UNVERSIONED_FROM else f"{fm}-{self.branch}"

    @property
    def nscq(self) -> str:
        nscq = "libnvidia-nscq"
        return nscq if self.branch >= FM_UNVERSIONED_FROM else f"{nscq}-{self.branch}"


def flavour_other(flavour: Flavour) -> Flavour:
    return "proprietary" if flavour == "open" else "open"


DRIVER_PREFIXES = (
    "nvidia-",
    "libnvidia-",
    "cuda-drivers",
    "libcuda1",
    "libnvcuvid",
    "libnvoptix",
    "xserver-xorg-video-nvidia",
    "libxnvctrl",
    "firmware-nvidia",
    "linux-modules-nvidia-",
    "linux-objects-nvidia-",
    "linux-signatures-nvidia-",
)
NOT_DRIVER_PREFIXES = ("nvidia-container-", "libnvidia-container", "nvidia-docker")
CANONICAL_BUILDS = re.compile(r"-server(-|$)|^linux-(modules|objects|signatures)-nvidia-")


def is_driver_package(name: str) -> bool:
    return name.startswith(DRIVER_PREFIXES) and not name.startswith(NOT_DRIVER_PREFIXES)


def upstream(version: str) -> str:
    """'1:580.95.05-0ubuntu1' -> '580.95.05': the driver release without epoch and revision."""
    without_epoch = version.split(":", 1)[-1]
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def branch_of(version: str) -> int | None:
    major = upstream(version).split(".", 1)[0]
    return int(major) if major.isdigit() and 300 <= int(major) < 1000 else None


def package_branch(name: str, version: str) -> int | None:
    """The driver branch a driver package belongs to: from its name, else from its version."""
    if not is_driver_package(name):
        return None
    match = re.search(r"-(\d{3})(?=-|$)", name)
    if match and 300 <= int(match.group(1)) < 1000:
        return int(match.group(1))
    return branch_of(version)


def foreign_packages(installed: dict[str, InstalledPackage], choice: DriverChoice) -> list[str]:
    """Installed driver packages that must go: another branch, Canonical's builds, other flavour."""
    foreign = []
    for name, package in sorted(installed.items()):
        branch = package_branch(name, package["version"])
        if branch is None:
            continue
        if (
            branch != choice.branch
            or CANONICAL_BUILDS.search(name)
            or name == choice.other_flavour_metapackage
        ):
            foreign.append(name)
    return foreign


def branch_packages(installed: dict[str, InstalledPackage], branch: int) -> list[str]:
    """Installed driver packages of `branch` (what gets held), sorted."""
    return sorted(
        name
        for name, package in installed.items()
        if package["installed"] and package_branch(name, package["version"]) == branch
    )


def installed_driver_version(
    installed: dict[str, InstalledPackage], choice: DriverChoice
) -> str | None:
    """The driver release the installed metapackage brings, e.g. '580.95.05'; None if absent."""
    package = installed.get(choice.metapackage)
    if package is None or not package["installed"]:
        return None
    return upstream(package["version"])


def matching_version(candidates: list[str], driver_version: str) -> str | None:
    """The repository version of Fabric Manager (or NSCQ) built for exactly this driver release."""
    for candidate in candidates:
        if upstream(candidate) == driver_version:
            return candidate
    return None


def toolkit_package(cuda: str) -> str:
    return "cuda-toolkit-" + cuda.replace(".", "-")


def toolkit_problem(cuda: str, branch: int, directory: str) -> str | None:
    """Why this toolkit cannot go on this host, or None. By CUDA minor-version compatibility a
    driver runs every toolkit of its CUDA major release (580: any 13.x; 535 and 570: any 12.x)
    and, by backward compatibility, those of older majors. Source: NVIDIA's "Minor Version
    Compatibility" page (URL in versions.toml `[cuda]`)."""
    wanted = catalog.version_tuple(cuda)
    max_cuda = catalog.driver_branches()[branch].max_cuda
    minimum = catalog.minor_version_minimum_branch(wanted[0])
    driver_major = catalog.version_tuple(max_cuda)[0]
    if wanted[0] > driver_major or minimum is None or branch < minimum:
        needs = f"branch {minimum} or newer" if minimum else "a newer driver"
        return (
            f"CUDA {cuda} needs a newer driver than branch {branch} (it runs CUDA "
            f"{driver_major}.x toolkits and older; CUDA {wanted[0]}.x needs {needs})"
        )
    if directory == "ubuntu2404" and wanted < (12, 5):
        package = toolkit_package(cuda)
        return f"NVIDIA's ubuntu2404 repository starts at CUDA 12.5; it has no {package}"
    return None


def dcgm_packages(branch: int, compute_capability: tuple[int, int] | None) -> list[str]:
    """DCGM 4 for the branch's CUDA major, its exporter, and profiling metrics before Hopper."""
    cuda_major = catalog.driver_branches()[branch].max_cuda.split(".")[0]
    packages = ["datacenter-gpu-manager-4-core", f"datacenter-gpu-manager-4-cuda{cuda_major}"]
    if compute_capability is not None and compute_capability < (9, 0):
        packages.append("datacenter-gpu-manager-4-proprietary")
    return [*packages, "datacenter-gpu-manager-exporter"]


ADOPTABLE_KINDS = ("LTSB", "PB")  # NVIDIA's supported branches; a New Feature Branch is short-lived


def host_driver_branch(
    installed: dict[str, InstalledPackage], loaded_version: str | None
) -> int | None:
    """The one driver branch the host arrived with: of its installed NVIDIA driver packages
    (not Canonical's builds), or of the loaded module when no driver package is installed (a
    runfile); None when there is none or several."""
    branches = {
        package_branch(name, package["version"])
        for name, package in installed.items()
        if package["installed"] and is_driver_package(name) and not CANONICAL_BUILDS.search(name)
    }
    branches.discard(None)
    if any(package_branch(n, p["version"]) for n, p in installed.items()):
        return branches.pop() if len(branches) == 1 else None
    return branch_of(loaded_version) if loaded_version else None


def adoptable_branch(
    wanted: int, pinned: bool, found: int | None, this_month: str
) -> catalog.DriverBranch | None:
    """The host's branch when the deploy keeps it instead of replacing it with `wanted`: the
    fleet did not pin a branch, and the host's is newer, a supported branch in the catalog
    (Long Term Support or Production, before its end of life `YYYY-MM`)."""
    if pinned or found is None or found <= wanted:
        return None
    branch = catalog.driver_branches().get(found)
    if branch is None or branch.kind not in ADOPTABLE_KINDS or branch.end_of_life < this_month:
        return None
    return branch
