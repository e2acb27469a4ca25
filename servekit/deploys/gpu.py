"""The GPU host deploy: NVIDIA's repository, the driver branch, Fabric Manager, persistence,
optional CUDA toolkit and DCGM, a reboot when the driver changed, and a verification at the end.

Decisions that depend on the host as it is before the deploy (release, GPUs on the PCI bus,
NVSwitch, Secure Boot, a driver from outside apt) are taken here, in `survey()`; everything that
depends on what earlier steps did is read again by the operations themselves when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from io import StringIO

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.connectors.local import LocalConnector
from pyinfra.context import host
from pyinfra.facts.files import Directory
from pyinfra.facts.server import Arch, KernelModules
from pyinfra.operations import apt, files, python, systemd

from servekit import catalog, nvidia
from servekit.credentials import APT_AUTH_FILE
from servekit.deploys import nvidia as ops
from servekit.deploys.common import problem
from servekit.deploys.credentials import mirror_login_files
from servekit.facts.nvidia import (
    LoadedDriver,
    NvidiaDriver,
    NvidiaGpus,
    NvidiaPackages,
    NvidiaPciDevices,
)
from servekit.facts.system import Kernel, KernelHeaders, OsRelease, SecureBoot
from servekit.hostplan import HOST_DATA_KEY, HostPlan, SourcesPlan
from servekit.nvidia import DriverChoice, GpuTarget, PolicyError
from servekit.render import GPU_PATHS, RenderedFile, gpu_files

CUDA_CHECK = "/usr/local/lib/servekit/cuda_check.py"


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


def is_local() -> bool:
    return issubclass(host.connector_cls, LocalConnector)


def gpu_target() -> GpuTarget:
    """The fleet's wishes for this host, or, without servekit data, what the facts allow."""
    raw = host.data.get(HOST_DATA_KEY)
    if raw is not None:
        return nvidia.target_from_plan(HostPlan.from_host_data(raw), is_local())
    return nvidia.target_from_facts(host.name, host.get_fact(NvidiaGpus), is_local())


def say(message: str) -> None:
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
    if not any(d["kind"] == "gpu" for d in pci) and smi["state"] != "ok":
        if target.declared and target.gpu_count:
            problem(
                name="Declared GPUs are missing",
                message=f"the fleet declares {target.gpu_count} × {target.gpu_model} but the host "
                "has no NVIDIA device on its PCI bus: fix the declaration or the machine",
            )
        else:
            say("no NVIDIA device on this host: nothing to do")
        return None

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

    compute_capability = target.compute_capability
    if compute_capability is None and smi["state"] == "ok" and smi["gpus"][0]["compute_cap"]:
        major, _, minor = str(smi["gpus"][0]["compute_cap"]).partition(".")
        compute_capability = (int(major), int(minor or 0))
    choice = DriverChoice(target.branch, nvidia.flavour_for(compute_capability), directory)

    installed = host.get_fact(NvidiaPackages)
    loaded = host.get_fact(NvidiaDriver)
    packaged = any(nvidia.package_branch(n, p["version"]) for n, p in installed.items())
    external = loaded is not None and not packaged
    if loaded is not None and external:
        if nvidia.branch_of(loaded["version"]) != target.branch:
            problem(
                name="Driver installed outside apt",
                message=f"driver {loaded['version']} was installed outside apt (not branch "
                f"{target.branch}); servekit does not replace a driver it did not install: "
                "remove it (`nvidia-uninstall`), or set versions.driver_branch to its branch",
            )
            return None
        say(f"driver {loaded['version']} ({loaded['flavour']}) is not from apt: left as it is")

    driver_will_change = not external and (
        bool(nvidia.foreign_packages(installed, choice))
        or nvidia.installed_driver_version(installed, choice) is None
    )
    secure_boot = host.get_fact(SecureBoot)
    if driver_will_change and secure_boot["enabled"] and not secure_boot["enrolled_keys"]:
        problem(
            name="Secure Boot blocks the driver",
            message="Secure Boot is on and no DKMS signing key is enrolled, so the driver "
            "modules DKMS builds would not load: enroll the key (`mokutil --import "
            "/var/lib/dkms/mok.pub`, reboot, confirm it at the console) and deploy again, or "
            "turn Secure Boot off",
        )
        return None

    nvswitch = ops.nvswitch_present(pci)
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
        keyring_sha256=_keyring_sha256(directory, arch),
    )


def _keyring_sha256(directory: str, arch: str) -> str | PolicyError:
    try:
        return nvidia.keyring_sha256(directory, arch, host.data.get(nvidia.KEYRING_SHA256_DATA_KEY))
    except PolicyError as error:
        return error


def any_changed(*operations: OperationMeta) -> Callable[[], bool]:
    return lambda: any(op.did_change() for op in operations)


def put(file: RenderedFile, name: str) -> OperationMeta:
    return files.put(name=name, src=StringIO(file.content), dest=file.path, mode=file.mode)


@deploy("NVIDIA GPU host")
def gpu_host() -> None:
    """
    Make this host ready for vLLM: the fleet's NVIDIA driver branch from NVIDIA's repository (or
    its mirror), held; Fabric Manager at the driver's exact version on NVSwitch hosts;
    persistence mode; optional CUDA toolkit and DCGM; a reboot when the driver changed; then a
    check that GPUs, driver, fabric and CUDA are what vLLM needs.
    """
    target = gpu_target()
    for note in target.notes:
        say(note)
    found = survey(target)
    if found is None:
        return
    rendered = {
        f.path: f
        for f in gpu_files(
            found.repository_url, nvidia.KEYRING_FILE, target.cuda_toolkit, found.systemd
        )
    }
    if found.needs_repository and not _repository(found, rendered):
        return
    nouveau = put(rendered[GPU_PATHS.nouveau], "Blacklist nouveau")
    ops.initramfs_updated(name="Rebuild the initramfs without nouveau", _if=nouveau.did_change)
    driver_ops = [] if found.external else _driver(found)
    _fabric_manager_and_holds(found)
    put(rendered[GPU_PATHS.unattended_upgrades], "Keep NVIDIA packages out of unattended-upgrades")
    _persistence(found, rendered)
    if target.cuda_toolkit:
        apt.packages(
            name=f"Install the CUDA {target.cuda_toolkit} toolkit",
            packages=[nvidia.toolkit_package(target.cuda_toolkit)],
        )
        put(rendered[GPU_PATHS.cuda_profile], "Put the CUDA toolkit on PATH")
    if target.dcgm:
        _dcgm(found)
    needs_reboot = _reboot(found, driver_ops)
    script = resources.files("servekit").joinpath("cuda_check.py")
    files.put(name="Upload the CUDA check", src=str(script), dest=CUDA_CHECK, mode="0755")
    rebooted_here = not (target.local or not target.reboot)
    ops.verified(
        name="Verify GPUs, driver, fabric and CUDA",
        target=target,
        script=CUDA_CHECK,
        _if=None if rebooted_here else (lambda: not needs_reboot()),
    )


def _sources() -> SourcesPlan | None:
    """The fleet's sources for this host (mirrors, their logins), or none without a plan."""
    raw = host.data.get(HOST_DATA_KEY)
    return HostPlan.from_host_data(raw).sources if raw is not None else None


def _repository(found: Survey, rendered: dict[str, RenderedFile]) -> bool:
    """NVIDIA's repository with its key, preferred for its packages, and apt's lists of it;
    False when the host stopped (its mirror credentials cannot be read)."""
    # apt (and apt-helper, which fetches the key package) read mirror logins from auth.conf.d
    if mirror_login_files(_sources(), [(APT_AUTH_FILE, "apt")]) is None:
        return False
    keyring = ops.cuda_keyring(
        name="Install NVIDIA's repository key (cuda-keyring)",
        url=nvidia.keyring_deb_url(found.repository_url),
        sha256=found.keyring_sha256,
    )
    keyring_list = files.file(
        name="Remove cuda-keyring's own source list (servekit's names the mirror)",
        path=f"/etc/apt/sources.list.d/cuda-{found.choice.directory}-{found.arch}.list",
        present=False,
    )
    sources = put(rendered[GPU_PATHS.sources], "Add NVIDIA's CUDA repository")
    preferences = put(
        rendered[GPU_PATHS.preferences], "Prefer NVIDIA's repository for its packages"
    )
    apt.update(
        name="Update apt after repository changes",
        _if=any_changed(keyring, keyring_list, sources, preferences),
    )
    choice, wanted = found.choice, []
    if not found.external:
        wanted += choice.packages
        if found.kernel and not found.kernel["headers_installed"]:
            wanted.insert(0, found.kernel["headers_package"])
    if found.nvswitch:
        wanted += [choice.fabricmanager, choice.nscq]
    if wanted:
        ops.apt_knows(name="Make sure apt knows the packages to install", packages=wanted)
    return True


def _driver(found: Survey) -> list[OperationMeta]:
    """Headers, other branches out, the branch in: the operations that change the driver."""
    choice = found.choice
    if found.kernel:
        apt.packages(
            name=f"Install kernel headers for {found.kernel['release']} (DKMS builds the driver)",
            packages=[found.kernel["headers_package"]],
        )
    changes = [
        ops.other_drivers_removed(
            name="Remove NVIDIA drivers of other branches or sources",
            branch=choice.branch,
            flavour=choice.flavour,
            directory=choice.directory,
        )
    ]
    for package in choice.packages:
        changes.append(
            apt.packages(
                name=f"Install {package} (driver branch {choice.branch}, {choice.flavour})",
                packages=[package],
                extra_install_args="--allow-change-held-packages",
            )
        )
    return changes


def _fabric_manager_and_holds(found: Survey) -> None:
    choice = found.choice
    held = [] if found.external else list(choice.packages)
    if found.nvswitch:
        ops.fabric_manager(
            name="Install Fabric Manager and NSCQ at the driver's version",
            branch=choice.branch,
            flavour=choice.flavour,
            directory=choice.directory,
        )
        held += [choice.fabricmanager, choice.nscq]
    if held:
        ops.driver_held(name="Hold the NVIDIA driver packages", branch=choice.branch, also=held)


def _persistence(found: Survey, rendered: dict[str, RenderedFile]) -> None:
    """Persistence mode: nvidia-persistenced with --persistence-mode from boot on (systemd), or
    `nvidia-smi -pm 1` where no systemd runs the daemon; then Fabric Manager's service."""
    if not found.systemd or found.external:
        if found.loaded:
            ops.persistence_mode(name="Turn persistence mode on")
    else:
        dropin = put(
            rendered[GPU_PATHS.persistenced], "Run nvidia-persistenced in persistence mode"
        )
        wanted = put(rendered[GPU_PATHS.persistenced_wanted], "Start nvidia-persistenced at boot")
        systemd.daemon_reload(name="Reload systemd units", _if=any_changed(dropin, wanted))
        if found.services_now:
            systemd.service(
                name="Restart nvidia-persistenced with the new settings",
                service="nvidia-persistenced.service",
                running=None,
                restarted=True,
                _if=dropin.did_change,
            )
            systemd.service(
                name="Start nvidia-persistenced",
                service="nvidia-persistenced.service",
                running=True,
            )
    if found.nvswitch and found.systemd:
        systemd.service(
            name="Enable Fabric Manager",
            service="nvidia-fabricmanager.service",
            enabled=True,
            running=True if found.services_now else None,
        )


def _dcgm(found: Survey) -> None:
    apt.packages(
        name="Install DCGM 4 and its exporter",
        packages=nvidia.dcgm_packages(found.target.branch, found.compute_capability),
    )
    if not found.systemd:
        say("no systemd: start nv-hostengine and dcgm-exporter (port 9400) yourself")
        return
    for service in ("nvidia-dcgm.service", "nvidia-dcgm-exporter.service"):
        systemd.service(
            name=f"Enable {service}",
            service=service,
            enabled=True,
            running=True if found.services_now else None,
        )


def _reboot(found: Survey, driver_ops: list[OperationMeta]) -> Callable[[], bool]:
    """Reboot when the driver changed or nouveau is loaded, in batches; never @local (say so).
    Returns whether a reboot was (or is) needed, for the steps after it."""
    target = found.target
    driver_changed = any_changed(*driver_ops)
    nouveau_loaded = "nouveau" in host.get_fact(KernelModules)

    def needs_reboot() -> bool:
        return nouveau_loaded or driver_changed()

    if target.local or not target.reboot:
        python.call(
            name="Say that a reboot is needed",
            function=_reboot_reminder,
            local=target.local,
            _if=needs_reboot,
        )
    else:
        ops.rebooted(
            name="Reboot to load the new driver",
            reason="nouveau is loaded" if nouveau_loaded else "the NVIDIA driver changed",
            _if=needs_reboot,
            _parallel=_reboot_batch(target.reboot_batch),
        )
    return needs_reboot


def _reboot_batch(wanted: int) -> int:
    """Hosts rebooted at once: as the fleet asks, but never the whole inventory together."""
    hosts = len(host.inventory.get_active_hosts())
    return max(1, min(wanted, hosts - 1)) if hosts > 1 else 1


def _reboot_reminder(local: bool) -> None:
    where = "this machine (servekit never reboots @local)" if local else "the host"
    say(f"the NVIDIA driver changed: reboot {where} to load it, then run this deploy again")
