"""A GPU host before the deploy, and the decisions that depend on it: NVIDIA's repository for its
release, GPUs on the PCI bus, NVSwitch, Secure Boot, a driver from outside apt.

Everything that depends on what earlier steps did is read again by the operations themselves
(`servekit.operations.nvidia`) when they run; these decisions are taken once, before any change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from pyinfra import logger
from pyinfra.context import host
from pyinfra.facts.files import Directory
from pyinfra.facts.server import Arch, Which

from servekit import catalog, nvidia
from servekit.facts.nvidia import NvidiaDriver, NvidiaGpus, NvidiaPciDevices
from servekit.facts.nvidia_packages import NvidiaPackages
from servekit.facts.system import Kernel, KernelHeaders, OsRelease, SecureBoot
from servekit.nvidia import DriverChoice, GpuTarget, PolicyError
from servekit.nvidia.shapes import InstalledPackage, LoadedDriver, SmiGpus
from servekit.operations.common import problem
from servekit.operations.nvidia import nvswitch_present


@dataclass(frozen=True)
class Survey:
    """This host before the deploy, and what the deploy will do about its driver."""

    target: GpuTarget
    choice: DriverChoice
    arch: str
    compute_capability: tuple[int, int] | None
    loaded: LoadedDriver | None
    external: bool  # a driver loaded that apt did not install: left alone
    driver_will_change: bool
    nvswitch: bool
    systemd: bool
    kernel: Kernel | None
    keyring_sha256: str | PolicyError
    """The cuda-keyring .deb's pinned sha256, or why there is none (refused if it is needed)."""

    @property
    def services_now(self) -> bool:
        """Services can start in this run: a driver runs and no new one waits for a reboot."""
        return self.loaded is not None and not self.driver_will_change

    @property
    def needs_repository(self) -> bool:
        target = self.target
        return not self.external or self.nvswitch or bool(target.cuda_toolkit or target.dcgm)

    @property
    def repository_url(self) -> str:
        return nvidia.repository_url(self.target.mirror, self.choice.directory, self.arch)


def say(message: str) -> None:
    """A warning about this host, in the deploy's output."""
    logger.warning(f"{host.print_prefix}{message}")


def version_problem(target: GpuTarget, directory: str) -> str | None:
    """Why the fleet's versions cannot work on this host, or None."""
    for minimum in target.minimum_drivers:
        if target.branch < (nvidia.branch_of(minimum.version) or 0):
            return (
                f"driver branch {target.branch} is older than {minimum.reason} needs "
                f"({minimum.version}): set versions.driver_branch to "
                f"{catalog.default_driver_branch()} or newer"
            )
    if target.cuda_toolkit:
        return nvidia.toolkit_problem(target.cuda_toolkit, target.branch, directory)
    return None


def survey(target: GpuTarget) -> Survey | None:
    """Look at the host; None (after saying why, or stopping the host) when there is nothing to
    do or something stops the deploy before any change."""
    if not target.nvidia:
        say("the fleet declares no NVIDIA GPU here: nothing to do")
        return None
    smi = host.get_fact(NvidiaGpus)
    pci = host.get_fact(NvidiaPciDevices)
    if not gpus_present(target, smi, any(d["kind"] == "gpu" for d in pci)):
        return None
    installed = host.get_fact(NvidiaPackages)
    loaded = host.get_fact(NvidiaDriver)
    target = newer_branch_adopted(target, installed, loaded)
    found = release_repository(target)
    if found is None:
        return None
    directory, arch = found
    compute_capability = compute_capability_of(target, smi)
    choice = DriverChoice(target.branch, nvidia.flavour_for(compute_capability), directory)
    external = driver_from_outside_apt(target, installed, loaded)
    if external is None:
        return None
    driver_will_change = not external and (
        bool(nvidia.foreign_packages(installed, choice))
        or nvidia.installed_driver_version(installed, choice) is None
    )
    if secure_boot_blocks_driver(driver_will_change):
        return None
    nvswitch = nvswitch_present(pci)
    if target.nvswitch_expected and not nvswitch:
        say(
            f"the fleet's {target.gpu_count} × {target.gpu_model} usually come with NVSwitch, but "
            "none is on the PCI bus: no Fabric Manager; check the machine type"
        )
    return Survey(
        target=target,
        choice=choice,
        arch=arch,
        compute_capability=compute_capability,
        loaded=loaded,
        external=external,
        driver_will_change=driver_will_change,
        nvswitch=nvswitch,
        systemd=bool(host.get_fact(Directory, path="/run/systemd/system")),
        kernel=host.get_fact(KernelHeaders),
        keyring_sha256=keyring_sha256(directory, arch),
    )


def this_month() -> str:
    return time.strftime("%Y-%m", time.gmtime())


def newer_branch_adopted(
    target: GpuTarget, installed: dict[str, InstalledPackage], loaded: LoadedDriver | None
) -> GpuTarget:
    """The target with the host's own driver branch when it is a newer supported one and the
    fleet pinned none: adopted, not downgraded. Deep Learning Base AMIs ship 595.91.07 in late
    2026 (release notes, e.g. docs.aws.amazon.com/dlami/latest/devguide/
    aws-deep-learning-ami-gpubaseossarm64-ul2404-2026-09-30.html)."""
    found = nvidia.host_driver_branch(installed, loaded["version"] if loaded else None)
    branch = nvidia.adoptable_branch(target.branch, target.branch_pinned, found, this_month())
    if branch is None:
        return target
    say(
        f"the host's NVIDIA driver is branch {branch.branch} ({branch.kind}, supported until "
        f"{branch.end_of_life}), newer than servekit's default {target.branch}: kept, not "
        "downgraded; set versions.driver_branch to choose a branch"
    )
    notes = (*target.notes, f"driver branch {branch.branch} adopted from the host")
    return replace(target, branch=branch.branch, notes=notes)


def gpus_present(target: GpuTarget, smi: SmiGpus, gpu_on_pci: bool) -> bool:
    """Whether the host has an NVIDIA GPU; without one, say so, or stop the host when the fleet
    declares GPUs."""
    if gpu_on_pci or smi["state"] == "ok":
        return True
    if target.declared and target.gpu_count:
        problem(
            name="Declared GPUs are missing",
            message=f"the fleet declares {target.gpu_count} × {target.gpu_model} but the host "
            "has no NVIDIA device on its PCI bus: fix the declaration or the machine",
        )
    else:
        say("no NVIDIA device on this host: nothing to do")
    return False


def release_repository(target: GpuTarget) -> tuple[str, str] | None:
    """NVIDIA's repository directory and architecture for this host's release, or None (after
    stopping the host) for a release, mirror or versions this policy cannot serve."""
    release = host.get_fact(OsRelease)
    try:
        if release is None:
            raise PolicyError("/etc/os-release is missing: cannot tell the distribution")
        directory, arch = nvidia.repository(
            release["id"], release["version_id"], host.get_fact(Arch)
        )
        nvidia.repository_url(target.mirror, directory, arch)  # refuses a malformed mirror
    except PolicyError as error:
        problem(name="Unsupported host", message=str(error))
        return None
    if reason := version_problem(target, directory):
        problem(name="Unsupported versions", message=reason)
        return None
    return directory, arch


def compute_capability_of(target: GpuTarget, smi: SmiGpus) -> tuple[int, int] | None:
    """The GPUs' compute capability: the declared model's, else what nvidia-smi reports."""
    compute_capability = target.compute_capability
    if compute_capability is None and smi["state"] == "ok" and smi["gpus"][0]["compute_cap"]:
        major, _, minor = str(smi["gpus"][0]["compute_cap"]).partition(".")
        compute_capability = (int(major), int(minor or 0))
    return compute_capability


def driver_from_outside_apt(
    target: GpuTarget, installed: dict[str, InstalledPackage], loaded: LoadedDriver | None
) -> bool | None:
    """Whether the loaded driver came from outside apt (then it is left alone); None (after
    stopping the host) when such a driver is not the fleet's branch."""
    packaged = any(nvidia.package_branch(n, p["version"]) for n, p in installed.items())
    external = loaded is not None and not packaged
    if loaded is not None and external:
        runfile = bool(host.get_fact(Which, command="nvidia-uninstall"))
        how = "with NVIDIA's runfile (nvidia-uninstall is present)" if runfile else "outside apt"
        if nvidia.branch_of(loaded["version"]) != target.branch:
            problem(
                name="Driver installed outside apt",
                message=f"driver {loaded['version']} was installed {how} (not branch "
                f"{target.branch}); servekit does not replace a driver it did not install: "
                "remove it (`sudo nvidia-uninstall`, reboot) and deploy again, or set "
                "versions.driver_branch to its branch",
            )
            return None
        say(
            f"driver {loaded['version']} ({loaded['flavour']}) was installed {how}: left as it "
            "is, neither held nor upgraded by servekit, and a new kernel needs its modules "
            "rebuilt (DKMS, if it was installed with --dkms); to have servekit manage the "
            "driver, `sudo nvidia-uninstall`, reboot and deploy again"
        )
    return external


def secure_boot_blocks_driver(driver_will_change: bool) -> bool:
    """Whether Secure Boot would refuse the modules DKMS builds for a driver about to change
    (then the host stops)."""
    secure_boot = host.get_fact(SecureBoot)
    if driver_will_change and secure_boot["enabled"] and not secure_boot["enrolled_keys"]:
        problem(
            name="Secure Boot blocks the driver",
            message="Secure Boot is on and no DKMS signing key is enrolled, so the driver "
            "modules DKMS builds would not load: enroll the key (`mokutil --import "
            "/var/lib/dkms/mok.pub`, reboot, confirm it at the console) and deploy again, or "
            "turn Secure Boot off",
        )
        return True
    return False


def keyring_sha256(directory: str, arch: str) -> str | PolicyError:
    """The cuda-keyring .deb's pinned sha256 (the host data may override the catalog's)."""
    try:
        return nvidia.keyring_sha256(directory, arch, host.data.get(nvidia.KEYRING_SHA256_DATA_KEY))
    except PolicyError as error:
        return error
