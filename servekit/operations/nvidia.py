"""pyinfra operations for NVIDIA GPU hosts: each reads facts, compares, yields commands or a noop.

The GPU deploy (`servekit.deploys.gpu`) strings them together; the decisions they apply are
`servekit.nvidia`'s pure policy.

A problem that stops one host (an unsupported release, GPUs missing, a verification failure) is
reported with `servekit.operations.common.problem`/`failure` (see there why it is a failing
command).
"""

from __future__ import annotations

from time import sleep
from typing import Any

from pyinfra import logger
from pyinfra.api.command import FunctionCommand, QuoteString, StringCommand
from pyinfra.api.operation import operation
from pyinfra.connectors.util import clear_askpass_cache, remove_any_sudo_askpass_file
from pyinfra.context import host
from pyinfra.facts.apt import noninteractive_apt
from pyinfra.facts.server import Which

from servekit import nvidia, systemd
from servekit.facts.cuda import CudaCheck
from servekit.facts.devices import CharDevices
from servekit.facts.nvidia import (
    FabricState,
    NvidiaDriver,
    NvidiaGpus,
    NvidiaPciDevices,
    NvswitchDevices,
)
from servekit.facts.nvidia_packages import AptVersions, NvidiaPackages
from servekit.facts.system import BootId, CudaToolkit
from servekit.nvidia import DriverChoice, Flavour, GpuTarget
from servekit.nvidia.shapes import PciDevice
from servekit.operations.common import Commands, failure


@operation()
def cuda_keyring(url: str, sha256: str | Exception) -> Commands:
    """
    Install NVIDIA's repository key package (cuda-keyring) from the repository or its mirror,
    unless a version of it is installed (later ones come through apt). The .deb is checked
    against its pinned sha256 before `dpkg -i`: apt cannot vouch for the package that holds the
    key apt will trust.

    + url: the .deb's URL (fetched with apt's own downloader, so no curl or wget is needed)
    + sha256: the digest the .deb must have (servekit's catalog pin, or the host's override),
      or why there is none (the step then stops the host)

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nvidia.cuda_keyring(
            name="Install NVIDIA's repository key (cuda-keyring)",
            url="https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/"
            "cuda-keyring_1.1-1_all.deb",
            sha256=servekit.nvidia.keyring_sha256("ubuntu2404", "x86_64"),
        )
    """
    installed = host.get_fact(NvidiaPackages).get(nvidia.KEYRING_PACKAGE)
    if installed and installed["installed"]:
        host.noop(f"{nvidia.KEYRING_PACKAGE} {installed['version']} is installed")
        return
    if isinstance(sha256, Exception):
        yield failure(f"servekit: {host.name}: {sha256}")
        return
    deb = host.get_temp_filename(url)
    yield StringCommand("/usr/lib/apt/apt-helper download-file", QuoteString(url), QuoteString(deb))
    yield StringCommand(nvidia.keyring_verify_command(deb, sha256, url))
    yield StringCommand("dpkg --force-confdef --force-confold -i", QuoteString(deb))
    yield StringCommand("rm -f", QuoteString(deb))


@operation()
def apt_knows(packages: list[str]) -> Commands:
    """
    Refresh apt's package lists when any of `packages` is unknown to it (a first run, or a run
    interrupted between writing the repository and `apt-get update`).

    + packages: packages the following operations install

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nvidia.apt_knows(
            name="Make sure apt knows the packages to install",
            packages=["cuda-drivers-570", "nvidia-fabricmanager-570"],
        )
    """
    unknown = [p for p in packages if not host.get_fact(AptVersions, package=p)]
    if not unknown:
        host.noop(f"apt knows {', '.join(packages)}")
        return
    yield "apt-get update"


@operation()
def other_drivers_removed(branch: int, flavour: Flavour, directory: str) -> Commands:
    """
    Purge NVIDIA driver packages of other branches, Canonical's builds, and the other flavour's
    metapackage, releasing their holds first.

    + branch: the driver branch to keep
    + flavour: the kernel module flavour to keep (`open` or `proprietary`)
    + directory: NVIDIA's repository directory for the release (`ubuntu2404`, ...)

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nvidia.other_drivers_removed(
            name="Remove NVIDIA drivers of other branches or sources",
            branch=570,
            flavour="open",
            directory="ubuntu2404",
        )
    """
    installed = host.get_fact(NvidiaPackages)
    foreign = nvidia.foreign_packages(installed, DriverChoice(branch, flavour, directory))
    if not foreign:
        host.noop(f"no NVIDIA driver packages other than branch {branch} {flavour}")
        return
    held = [name for name in foreign if installed[name]["held"]]
    if held:
        yield StringCommand("apt-mark unhold", *map(QuoteString, held))
    yield StringCommand(noninteractive_apt("purge"), *map(QuoteString, foreign))


def driver_version(choice: DriverChoice) -> str | None:
    """The installed driver's release: its apt package's, or the loaded module's when the driver
    came from outside apt (no NVIDIA driver package installed at all)."""
    installed = host.get_fact(NvidiaPackages)
    version = nvidia.installed_driver_version(installed, choice)
    if version is not None:
        return version
    if any(nvidia.package_branch(n, p["version"]) for n, p in installed.items()):
        return None  # packages of another branch or source: the driver is about to change
    loaded = host.get_fact(NvidiaDriver)
    return loaded["version"] if loaded else None


@operation()
def fabric_manager(branch: int, flavour: Flavour, directory: str) -> Commands:
    """
    Install Fabric Manager and NSCQ at exactly the installed driver's version, resolved from the
    repository (never from a template): a mismatched Fabric Manager refuses to start.

    + branch: the driver branch
    + flavour: the driver's kernel module flavour
    + directory: NVIDIA's repository directory for the release

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nvidia.fabric_manager(
            name="Install Fabric Manager and NSCQ at the driver's version",
            branch=570,
            flavour="open",
            directory="ubuntu2404",
        )
    """
    choice = DriverChoice(branch, flavour, directory)
    driver = driver_version(choice)
    if driver is None:
        yield failure(
            f"servekit: no NVIDIA driver of branch {branch} is installed, so Fabric Manager has "
            "no version to match (the driver installation before this step failed)"
        )
        return
    installed = host.get_fact(NvidiaPackages)
    wanted = {}
    for package in (choice.fabricmanager, choice.nscq):
        current = installed.get(package)
        if current and current["installed"] and nvidia.upstream(current["version"]) == driver:
            continue
        offered = host.get_fact(AptVersions, package=package)
        version = nvidia.matching_version(offered, driver)
        if version is None:
            yield failure(
                f"servekit: the NVIDIA repository has no {package} for driver {driver} "
                f"(it offers: {', '.join(offered) or 'none'}); Fabric Manager must match the "
                f"driver exactly: update the mirror, or install a driver it has a {package} for"
            )
            return
        wanted[package] = version
    if not wanted:
        host.noop(f"{choice.fabricmanager} and {choice.nscq} match driver {driver}")
        return
    yield StringCommand(
        noninteractive_apt("install --allow-downgrades --allow-change-held-packages"),
        *(QuoteString(f"{name}={version}") for name, version in wanted.items()),
    )


@operation()
def driver_held(branch: int, also: list[str] | None = None) -> Commands:
    """
    Hold every installed package of the driver branch (apt-mark hold), so that neither
    `apt-get upgrade` nor unattended-upgrades moves the driver away from its kernel module and
    Fabric Manager.

    + branch: the driver branch
    + also: packages this deploy installs, held even before they show as installed

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nvidia.driver_held(
            name="Hold the NVIDIA driver packages",
            branch=570,
            also=["nvidia-fabricmanager-570", "libnvidia-nscq-570"],
        )
    """
    installed = host.get_fact(NvidiaPackages)
    packages = set(nvidia.branch_packages(installed, branch)) | set(also or [])
    to_hold = sorted(p for p in packages if p not in installed or not installed[p]["held"])
    if not to_hold:
        host.noop(f"the driver's {len(packages)} packages are held")
        return
    yield StringCommand("apt-mark hold", *map(QuoteString, to_hold))


@operation()
def persistence_mode() -> Commands:
    """
    Turn persistence mode on with `nvidia-smi -pm 1` where no systemd runs nvidia-persistenced
    (it lasts until the next reboot).

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nvidia.persistence_mode(name="Turn persistence mode on")
    """
    smi = host.get_fact(NvidiaGpus)
    off = [str(g["index"]) for g in smi["gpus"] if g["persistence"] is False]
    if smi["state"] != "ok" or not off:
        host.noop("persistence mode is on" if smi["state"] == "ok" else "no GPU to set")
        return
    yield "nvidia-smi -pm 1"


@operation()
def initramfs_updated() -> Commands:
    """
    Rebuild the initramfs (so nouveau's blacklist applies at boot), where initramfs-tools is.

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nouveau = files.put(src=..., dest="/etc/modprobe.d/servekit-blacklist-nouveau.conf")
        nvidia.initramfs_updated(name="Rebuild the initramfs", _if=nouveau.did_change)
    """
    if not host.get_fact(Which, command="update-initramfs"):
        host.noop("no initramfs-tools on this host: nothing to rebuild")
        return
    yield "update-initramfs -u -k all"


@operation(is_idempotent=False)
def rebooted(reason: str, timeout: int = 600, interval: int = 2) -> Commands:
    """
    Reboot and wait until the host answers with a new boot id.

    Like ``server.reboot``, but it tells a finished reboot by the boot id instead of the uptime,
    which in a container is the host machine's and does not restart.

    + reason: why the host reboots (shown in the log)
    + timeout: seconds to wait for the host to come back
    + interval: seconds between connection attempts

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nvidia.rebooted(
            name="Reboot to load the new driver",
            reason="the NVIDIA driver changed",
            _if=driver_changed,
        )
    """
    before: list[str | None] = []

    def remember_boot(state: Any, host: Any) -> bool:
        remove_any_sudo_askpass_file(host)
        before.append(host.get_fact(BootId))
        logger.info(f"{host.print_prefix}rebooting: {reason}")
        return True

    def wait_for_boot(state: Any, host: Any) -> bool:
        clear_askpass_cache(host)
        host.disconnect()
        for _ in range(max(1, timeout // interval)):
            sleep(interval)
            host.connect(show_errors=False)
            if host.connected and host.get_fact(BootId) not in (None, before[0]):
                return True
        logger.error(f"{host.print_prefix}did not come back from the reboot in {timeout}s")
        return False

    yield FunctionCommand(remember_boot, (), {})
    yield StringCommand("( sleep 1 && (systemctl reboot || reboot) ) </dev/null >/dev/null 2>&1 &")
    yield FunctionCommand(wait_for_boot, (), {})


@operation()
def verified(target: GpuTarget, script: str) -> Commands:
    """
    Check what vLLM needs: the declared GPUs, a driver at least the pinned engines' minimum,
    persistence mode, a trained NVSwitch fabric, and CUDA initialising through the driver API,
    inside the engine units' sandbox (systemd-run with their hardening and the DeviceAllow=
    lines of the device groups this driver registers in /proc/devices), so that a host that
    passes proves the engines will see their GPUs. A converged host gets no command; a
    failing one stops with each failure's meaning and fix.

    + target: what the fleet declares for this host
    + script: the uploaded CUDA check (servekit/cuda_check.py)

    **Example:**

    .. code:: python

        from servekit.operations import nvidia

        nvidia.verified(
            name="Verify GPUs, driver, fabric and CUDA",
            target=servekit.nvidia.target_from_plan(plan, local=False),
            script="/usr/local/lib/servekit/cuda_check.py",
        )
    """
    smi = host.get_fact(NvidiaGpus)
    nvswitch = nvswitch_present()
    groups = host.get_fact(CharDevices)
    sandbox = systemd.gpu_check_sandbox(groups)
    cuda = None
    if smi["state"] == "ok":
        cuda = host.get_fact(CudaCheck, script=script, run_args=systemd.systemd_run(sandbox))
    findings = nvidia.verify(
        target,
        smi,
        host.get_fact(FabricState) if nvswitch else [],
        cuda,
        nvswitch,
        host.get_fact(CudaToolkit, version=target.cuda_toolkit) if target.cuda_toolkit else None,
        device_allow=list(sandbox.devices),
    )
    failed = [f for f in findings if not f.ok]
    if failed:
        lines = "\n".join(f"  {finding}" for finding in findings)
        yield failure(f"servekit: {host.name}: the GPU host is not ready for vLLM:\n{lines}")
        return
    host.noop("verified: " + "; ".join(f"{f.check}: {f.detail}" for f in findings))


def nvswitch_present(pci: list[PciDevice] | None = None) -> bool:
    """NVSwitch chips on the PCI bus (before any driver), or registered by the loaded driver."""
    pci = host.get_fact(NvidiaPciDevices) if pci is None else pci
    return any(d["kind"] == "nvswitch" for d in pci) or bool(host.get_fact(NvswitchDevices))
