"""NVIDIA driver policy: packages per distribution and branch, version matching, verification.

Pure functions over facts and the fleet's choices; `servekit.deploys.nvidia` applies them to hosts.
Sources (../shared/reference/nvidia.md): NVIDIA's driver installation guide (open modules for
Turing and newer, pinning packages and unversioned names from branch 590), NVIDIA's
gpu-driver-container (Fabric Manager and NSCQ names, unversioned from 580), DeepOps and NVIDIA's
Ansible role (persistence mode, nouveau), CUDA minor-version compatibility.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from servekit import catalog, shell
from servekit.facts.nvidia import CudaCheckResult, FabricGpu, InstalledPackage, SmiGpus
from servekit.facts.system import Toolkit
from servekit.hostplan import HostPlan
from servekit.spec import Versions

Flavour = Literal["open", "proprietary"]

DEFAULT_MIRROR = "https://developer.download.nvidia.com/compute/cuda/repos"
REPOSITORIES = {("ubuntu", "22.04"): "ubuntu2204", ("ubuntu", "24.04"): "ubuntu2404"} | {
    ("debian", "12"): "debian12"
}
REPOSITORY_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "sbsa", "arm64": "sbsa"}
KEYRING_PACKAGE = "cuda-keyring"
KEYRING_VERSION = catalog.cuda_keyring_version()
KEYRING_SHA256_DATA_KEY = "servekit_cuda_keyring_sha256"
"""pyinfra host data that overrides the catalog's cuda-keyring pin (a test repository's own key
package, or a mirror that repackages NVIDIA's key)."""
SHA256 = re.compile(r"^[0-9a-f]{64}$")
KEYRING_FILE = "/usr/share/keyrings/cuda-archive-keyring.gpg"
OPEN_MODULES_FROM = (7, 5)  # Turing; older GPUs (Volta and before) need the proprietary modules
UNVERSIONED_FROM = 590  # Ubuntu drops the branch from package names; a pinning package holds it
FM_UNVERSIONED_FROM = 580  # nvidia-fabricmanager / libnvidia-nscq without the branch suffix
FABRIC_DONE = "Completed"
CUDA_SYSTEM_NOT_READY = 802


class PolicyError(ValueError):
    """A host or fleet choice this policy cannot serve; the message says why and what to do."""


def repository(os_id: str, version_id: str, arch: str) -> tuple[str, str]:
    """NVIDIA's repository directory and architecture for a release: ('ubuntu2404', 'x86_64')."""
    directory = REPOSITORIES.get((os_id, version_id))
    if directory is None:
        supported = ", ".join(f"{i} {v}" for i, v in REPOSITORIES)
        raise PolicyError(f"{os_id} {version_id} is not supported (supported: {supported})")
    repo_arch = REPOSITORY_ARCH.get(arch)
    if repo_arch is None:
        raise PolicyError(f"architecture {arch} has no NVIDIA CUDA repository")
    return directory, repo_arch


def repository_url(mirror: str, directory: str, arch: str) -> str:
    """The repository's URL for a release (`<mirror>/<directory>/<arch>/`), as apt's `URIs:`.

    It becomes one deb822 field value: a mirror with a control character (a newline could add a
    `Trusted: yes` field), a space (a second URI), user info (credentials belong in
    `Sources.mirror_credentials`) or another scheme is refused (PolicyError)."""
    if problem := mirror_problem(mirror):
        raise PolicyError(problem)
    return f"{mirror.rstrip('/')}/{directory}/{arch}/"


def mirror_problem(mirror: str) -> str | None:
    """Why `mirror` cannot be NVIDIA's repository URL in an apt sources file, or None."""
    parts = urlsplit(mirror)
    if shell.CONTROL.search(mirror) or any(c.isspace() for c in mirror):
        return f"sources.nvidia_apt {mirror!r} contains a space or a control character"
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.path):
        return f"sources.nvidia_apt {mirror!r} is not an http(s) URL"
    if "@" in parts.netloc:
        return (
            f"sources.nvidia_apt {mirror!r} carries a login: put it in "
            "Sources(mirror_credentials=SecretRef(...)) instead"
        )
    return None


def keyring_deb_url(repository: str) -> str:
    """The cuda-keyring .deb servekit installs, in the repository (or its mirror)."""
    return f"{repository}{KEYRING_PACKAGE}_{KEYRING_VERSION}_all.deb"


def keyring_sha256(directory: str, arch: str, override: object = None) -> str:
    """The sha256 the cuda-keyring .deb must have: the host's override, else the catalog's pin
    for the repository directory and architecture; PolicyError when there is none or it is not
    a sha256."""
    pinned = str(override) if override else catalog.cuda_keyring_sha256(directory, arch)
    if pinned is None:
        raise PolicyError(
            f"servekit has no pinned sha256 for {KEYRING_PACKAGE} {KEYRING_VERSION} of "
            f"{directory}/{arch}: add it to [cuda_keyring.sha256] in servekit/catalog/"
            f"versions.toml (or set the host's pyinfra data {KEYRING_SHA256_DATA_KEY})"
        )
    if not SHA256.match(pinned):
        raise PolicyError(f"{pinned!r} is not a sha256 (64 lowercase hex digits)")
    return pinned


def keyring_verify_command(path: str, sha256: str, url: str) -> str:
    """Shell: stop (and delete `path`) unless the downloaded .deb has the pinned sha256; run
    between the download and `dpkg -i`, so a tampered or corrupt key package is never
    installed."""
    q = shell.quote
    if not SHA256.match(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return (
        f"have=$(sha256sum {q(path)} | cut -d ' ' -f 1) && "
        f'{{ [ "$have" = {q(sha256)} ] || {{ rm -f {q(path)}; '
        + shell.die(
            "refusing ",
            url,
            ": its sha256 is ",
            shell.var("have"),
            f", servekit pins {sha256} for {KEYRING_PACKAGE} {KEYRING_VERSION} (a tampered or "
            "corrupt download); nothing was installed",
        )
        + "; }; }"
    )


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
    """Why this toolkit cannot go on this host, or None."""
    wanted = catalog.version_tuple(cuda)
    max_cuda = catalog.driver_branches()[branch].max_cuda
    if wanted > catalog.version_tuple(max_cuda):
        return (
            f"CUDA {cuda} needs a newer driver than branch {branch} (it supports CUDA ≤ {max_cuda})"
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


@dataclass(frozen=True)
class MinimumDriver:
    version: str
    reason: str


@dataclass(frozen=True)
class GpuTarget:
    """What the GPU deploy aims for on one host: from the fleet, or derived from facts."""

    host: str
    declared: bool
    gpu_model: str | None
    gpu_count: int
    branch: int
    nvidia: bool = True
    nvswitch_expected: bool = False
    mirror: str = DEFAULT_MIRROR
    cuda_toolkit: str | None = None
    dcgm: bool = False
    reboot: bool = True
    reboot_batch: int = 1
    local: bool = False
    minimum_drivers: tuple[MinimumDriver, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        if self.gpu_model is None:
            return None
        return catalog.gpu(self.gpu_model).compute_capability_tuple or None


def minimum_drivers(vllm_version: str, vllm: bool, ollama: bool) -> tuple[MinimumDriver, ...]:
    """The driver releases the host's engines need (catalog: vLLM's default build, Ollama)."""
    needed = []
    if vllm:
        version = vllm_version
        build = catalog.vllm_release(version).builds[0]
        needed.append(MinimumDriver(build.min_driver, f"vLLM {version} (CUDA {build.cuda} build)"))
    if ollama:
        needed.append(MinimumDriver(catalog.ollama_versions().min_driver, "Ollama"))
    return tuple(needed)


def target_from_plan(plan: HostPlan, local: bool) -> GpuTarget:
    setup = plan.gpu_setup
    return GpuTarget(
        host=plan.name,
        declared=True,
        gpu_model=plan.gpu_model,
        gpu_count=plan.gpu_count,
        nvidia="gpu" in plan.roles,
        nvswitch_expected=plan.nvswitch_expected,
        branch=plan.versions.driver_branch,
        mirror=plan.sources.nvidia_apt,
        cuda_toolkit=setup.cuda_toolkit,
        dcgm=setup.dcgm,
        reboot=setup.reboot,
        reboot_batch=setup.reboot_batch,
        local=local or plan.connection == "local",
        minimum_drivers=minimum_drivers(
            plan.versions.vllm,
            vllm=bool(plan.vllm) or plan.ollama is None,
            ollama=plan.ollama is not None,
        ),
    )


def target_from_facts(host: str, smi: SmiGpus, local: bool) -> GpuTarget:
    """No servekit data for this host: defaults from the catalog, GPUs as the host reports them."""
    model, count, notes = None, 0, ["no servekit host data: using catalog defaults"]
    if smi["state"] == "ok":
        count = len(smi["gpus"])
        try:
            model = catalog.gpu(smi["gpus"][0]["name"]).name
        except catalog.CatalogError:
            notes.append(f"GPU {smi['gpus'][0]['name']!r} is not in servekit's catalog")
        notes.append(f"GPUs from nvidia-smi: {count} × {smi['gpus'][0]['name']}")
    else:
        notes.append("GPUs unknown until the driver runs: model and count are not checked")
    vllm_version = Versions().vllm  # the fleet schema's default
    return GpuTarget(
        host=host,
        declared=False,
        gpu_model=model,
        gpu_count=count,
        branch=catalog.default_driver_branch(),
        local=local,
        minimum_drivers=minimum_drivers(vllm_version, vllm=True, ollama=False),
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class Finding:
    """One verification check: what was checked, what was found, and if it failed, the fix."""

    ok: bool
    check: str
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        text = f"{mark}: {self.check}: {self.detail}"
        return f"{text}\n      fix: {self.fix}" if self.fix else text


SMI_FINDINGS = {
    "missing": (
        "nvidia-smi is not installed: the driver's utilities are missing",
        "run this deploy again; if the driver comes from elsewhere, install its utilities",
    ),
    "no_driver": (
        "the NVIDIA kernel module is not loaded (nvidia-smi cannot reach the driver)",
        "reboot; if it persists, check `dkms status` for this kernel and Secure Boot "
        "(`mokutil --sb-state`: unsigned modules do not load)",
    ),
    "mismatch": (
        "Driver/library version mismatch: the loaded kernel module is not the installed "
        "driver's (it was upgraded without a reboot)",
        "reboot the host; if it persists, reinstall the driver packages so module and "
        "libraries match",
    ),
    "no_devices": (
        "the driver runs but sees no GPU",
        "check `dmesg | grep -i nvrm` (GPU fallen off the bus, or too old for the open modules)",
    ),
}

CUDA_ERRORS = {
    CUDA_SYSTEM_NOT_READY: (
        "CUDA error 802 (system not yet initialized): the NVSwitch fabric is not trained, so "
        "Fabric Manager is not running",
        "start Fabric Manager (`systemctl enable --now nvidia-fabricmanager`) at exactly the "
        "driver's version; see `journalctl -u nvidia-fabricmanager`",
    ),
    100: ("CUDA sees no device (error 100)", "check `nvidia-smi` and `dmesg | grep -i nvrm`"),
    804: (
        "CUDA forward compatibility is not supported here (error 804)",
        "remove cuda-compat packages, or use a driver branch that supports the CUDA version",
    ),
}


def _versions_ok(driver: str, needed: tuple[MinimumDriver, ...]) -> list[Finding]:
    findings = []
    for minimum in needed:
        ok = catalog.version_tuple(driver) >= catalog.version_tuple(minimum.version)
        findings.append(
            Finding(
                ok,
                "driver version",
                f"{driver} {'≥' if ok else '<'} {minimum.version} needed by {minimum.reason}",
                "" if ok else "set versions.driver_branch to a branch that provides it (580)",
            )
        )
    return findings


def verify(
    target: GpuTarget,
    smi: SmiGpus,
    fabric: list[FabricGpu],
    cuda: CudaCheckResult | None,
    nvswitch: bool,
    toolkit: Toolkit | None = None,
    device_allow: list[str] | None = None,
) -> list[Finding]:
    """Everything vLLM needs from the GPUs (and the toolkit, when asked for), checked on the host
    as it is now."""
    if smi["state"] != "ok":
        detail, fix = SMI_FINDINGS.get(smi["state"], (f"nvidia-smi failed: {smi['message']}", ""))
        return [Finding(False, "driver", f"{detail} ({smi['message']})", fix)]
    gpus = smi["gpus"]
    findings = [_gpus_found(target, [g["name"] for g in gpus])]
    findings += _versions_ok(gpus[0]["driver_version"], target.minimum_drivers)
    off = [str(g["index"]) for g in gpus if g["persistence"] is not True]
    findings.append(
        Finding(
            not off,
            "persistence mode",
            "on for every GPU" if not off else f"off on GPU {', '.join(off)}",
            ""
            if not off
            else "enable nvidia-persistenced with --persistence-mode (this deploy does)",
        )
    )
    if nvswitch:
        findings.append(_fabric_done(fabric))
    findings.append(_cuda_ok(cuda, device_allow or []))
    if target.cuda_toolkit:
        findings.append(_toolkit_ok(target.cuda_toolkit, toolkit))
    return findings


def _toolkit_ok(wanted: str, toolkit: Toolkit | None) -> Finding:
    if toolkit is not None and toolkit["version"] == wanted:
        return Finding(True, "CUDA toolkit", f"{wanted} (nvcc {toolkit['build']})")
    found = f"nvcc reports {toolkit['version']}" if toolkit else "no nvcc"
    return Finding(
        False,
        "CUDA toolkit",
        f"/usr/local/cuda-{wanted}: {found}",
        f"install {toolkit_package(wanted)} from NVIDIA's repository",
    )


def _gpus_found(target: GpuTarget, names: list[str]) -> Finding:
    seen = f"{len(names)} × {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    if not target.declared or target.gpu_model is None:
        return Finding(True, "GPUs", f"{seen} (nothing declared to compare with)")
    models = set()
    for name in names:
        try:
            models.add(catalog.gpu(name).name)
        except catalog.CatalogError:
            models.add(name)
    ok = models == {target.gpu_model} and len(names) == target.gpu_count
    declared = f"{target.gpu_count} × {target.gpu_model}"
    return Finding(
        ok,
        "GPUs",
        f"{seen}, as declared" if ok else f"the host has {seen}; the fleet declares {declared}",
        ""
        if ok
        else f"fix the declaration of {target.host}, or check the hardware (`nvidia-smi -L`)",
    )


def _fabric_done(fabric: list[FabricGpu]) -> Finding:
    states = {g["bus_id"]: g["state"] for g in fabric}
    pending = {bus: state for bus, state in states.items() if state != FABRIC_DONE}
    if fabric and not pending:
        return Finding(True, "NVSwitch fabric", f"{FABRIC_DONE} on {len(fabric)} GPUs")
    detail = ", ".join(f"{bus}: {state}" for bus, state in pending.items()) or "no fabric state"
    return Finding(
        False,
        "NVSwitch fabric",
        f"not trained ({detail}): Fabric Manager is not running or does not match the driver",
        "`systemctl status nvidia-fabricmanager`; its version must equal the driver's "
        "(`dpkg -l nvidia-fabricmanager`, `nvidia-smi`)",
    )


def _cuda_ok(cuda: CudaCheckResult | None, device_allow: list[str]) -> Finding:
    if cuda is None:
        return Finding(False, "CUDA", "the CUDA check did not run", "run the deploy again")
    where = (
        "in the engine sandbox"
        if cuda.get("sandbox") == "systemd"
        else "unsandboxed: no systemd on this host to run it in the engine sandbox"
    )
    if cuda.get("ok"):
        devices = cuda.get("devices", 0)
        return Finding(
            True,
            "CUDA",
            f"initialised {devices} device(s), 1 MiB allocated on each "
            f"(driver supports CUDA {cuda.get('driver_cuda_version')}), {where}",
        )
    if cuda.get("sandbox") == "systemd" and cuda.get("unsandboxed_ok"):
        allowed = ", ".join(device_allow) or "no device"
        return Finding(
            False,
            "CUDA in the engine sandbox",
            "CUDA works outside the sandbox but not inside it: the sandbox, not the driver, hides "
            f"the GPUs, so vLLM would see none (the units allow {allowed}; "
            f"inside: {cuda.get('error')})",
            "compare `cat /proc/devices` with the DeviceAllow= lines of the vLLM unit and "
            "report the missing device group to servekit",
        )
    code = cuda.get("error_code")
    meaning, fix = CUDA_ERRORS.get(code or -1, (str(cuda.get("error")), ""))
    if code is not None and code not in CUDA_ERRORS:
        meaning = f"CUDA failed: {cuda.get('error')}"
        fix = "check `dmesg | grep -i nvrm` and `nvidia-smi -q`"
    return Finding(False, "CUDA", meaning, fix)
