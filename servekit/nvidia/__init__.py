"""NVIDIA driver policy: packages per distribution and branch, version matching, verification,
and the files of a GPU host. Pure functions over facts and the fleet's choices;
`servekit.operations.nvidia` applies them to hosts.

Sources: NVIDIA's driver installation guide (open modules for Turing and newer, pinning packages
and unversioned names from branch 590), NVIDIA's gpu-driver-container (Fabric Manager and NSCQ
names, unversioned from 580), DeepOps and NVIDIA's Ansible role (persistence mode, nouveau),
CUDA minor-version compatibility.

- `apt_source`: NVIDIA's repository per release, its mirror URL, the pinned cuda-keyring
- `driver_packages`: the packages of a driver branch and flavour, foreign ones, version matching
- `gpu_target`: what the deploy aims for on one host (`GpuTarget`)
- `checks`: the verification of a GPU host (`verify`, `Finding`)
- `host_files`: the files a GPU host gets (`gpu_files`, `GPU_PATHS`)
"""

from servekit.nvidia.apt_source import (
    DEFAULT_MIRROR,
    KEYRING_FILE,
    KEYRING_PACKAGE,
    KEYRING_SHA256_DATA_KEY,
    KEYRING_VERSION,
    REPOSITORIES,
    REPOSITORY_ARCH,
    SHA256,
    PolicyError,
    keyring_deb_url,
    keyring_sha256,
    keyring_verify_command,
    mirror_problem,
    repository,
    repository_url,
)
from servekit.nvidia.checks import (
    CUDA_ERRORS,
    CUDA_SYSTEM_NOT_READY,
    FABRIC_DONE,
    SMI_FINDINGS,
    Finding,
    verify,
)
from servekit.nvidia.driver_packages import (
    CANONICAL_BUILDS,
    DRIVER_PREFIXES,
    FM_UNVERSIONED_FROM,
    NOT_DRIVER_PREFIXES,
    OPEN_MODULES_FROM,
    UNVERSIONED_FROM,
    DriverChoice,
    Flavour,
    branch_of,
    branch_packages,
    dcgm_packages,
    flavour_for,
    flavour_other,
    foreign_packages,
    installed_driver_version,
    is_driver_package,
    matching_version,
    package_branch,
    toolkit_package,
    toolkit_problem,
    upstream,
)
from servekit.nvidia.gpu_target import (
    GpuTarget,
    MinimumDriver,
    minimum_drivers,
    target_from_facts,
    target_from_plan,
)
from servekit.nvidia.host_files import (
    GPU_PATHS,
    PERSISTENCED_UNIT,
    PERSISTENCED_USER,
    UNATTENDED_UPGRADES_BLACKLIST,
    GpuFilePaths,
    gpu_files,
)

__all__ = [
    "CANONICAL_BUILDS",
    "CUDA_ERRORS",
    "CUDA_SYSTEM_NOT_READY",
    "DEFAULT_MIRROR",
    "DRIVER_PREFIXES",
    "FABRIC_DONE",
    "FM_UNVERSIONED_FROM",
    "GPU_PATHS",
    "KEYRING_FILE",
    "KEYRING_PACKAGE",
    "KEYRING_SHA256_DATA_KEY",
    "KEYRING_VERSION",
    "NOT_DRIVER_PREFIXES",
    "OPEN_MODULES_FROM",
    "PERSISTENCED_UNIT",
    "PERSISTENCED_USER",
    "REPOSITORIES",
    "REPOSITORY_ARCH",
    "SHA256",
    "SMI_FINDINGS",
    "UNATTENDED_UPGRADES_BLACKLIST",
    "UNVERSIONED_FROM",
    "DriverChoice",
    "Finding",
    "Flavour",
    "GpuFilePaths",
    "GpuTarget",
    "MinimumDriver",
    "PolicyError",
    "branch_of",
    "branch_packages",
    "dcgm_packages",
    "flavour_for",
    "flavour_other",
    "foreign_packages",
    "gpu_files",
    "installed_driver_version",
    "is_driver_package",
    "keyring_deb_url",
    "keyring_sha256",
    "keyring_verify_command",
    "matching_version",
    "minimum_drivers",
    "mirror_problem",
    "package_branch",
    "repository",
    "repository_url",
    "target_from_facts",
    "target_from_plan",
    "toolkit_package",
    "toolkit_problem",
    "upstream",
    "verify",
]
