"""The GPU host deploy: NVIDIA's repository, the driver branch, Fabric Manager, persistence,
optional CUDA toolkit and DCGM, a reboot when the driver changed, and a verification at the end.

Decisions that depend on the host as it is before the deploy (release, GPUs on the PCI bus,
NVSwitch, Secure Boot, a driver from outside apt) are taken here; everything that depends on
what earlier steps did is read again by the operations themselves when they run.
"""

from __future__ import annotations

from collections.abc import Callable
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
from servekit.deploys import nvidia as ops
from servekit.facts.nvidia import NvidiaDriver, NvidiaGpus, NvidiaPackages, NvidiaPciDevices
from servekit.facts.system import KernelHeaders, OsRelease, SecureBoot
from servekit.hostplan import HOST_DATA_KEY, HostPlan
from servekit.nvidia import DriverChoice, GpuTarget, PolicyError
from servekit.render import GPU_PATHS, RenderedFile, gpu_files

CUDA_CHECK = "/usr/local/lib/servekit/cuda_check.py"


def is_local() -> bool:
    return issubclass(host.connector_cls, LocalConnector)


def gpu_target() -> GpuTarget:
    """The fleet's wishes for this host, or, without servekit data, what the facts allow."""
    raw = host.data.get(HOST_DATA_KEY)
    if raw is not None:
        return nvidia.target_from_plan(HostPlan.from_host_data(raw), is_local())
    return nvidia.target_from_facts(host.name, host.get_fact(NvidiaGpus), is_local())


def startup_problem(target: GpuTarget, choice: DriverChoice | None) -> str | None:
    """A reason to stop before changing anything, or None."""
    for minimum in target.minimum_drivers:
        if target.branch < (nvidia.branch_of(minimum.version) or 0):
            return (
                f"driver branch {target.branch} is older than {minimum.reason} needs "
                f"({minimum.version}): set versions.driver_branch to "
                f"{catalog.default_driver_branch()} or newer"
            )
    if target.cuda_toolkit and choice is not None:
        return nvidia.toolkit_problem(target.cuda_toolkit, target.branch, choice.directory)
    return None


def any_changed(*operations: OperationMeta | None) -> Callable[[], bool]:
    present = [op for op in operations if op is not None]
    return lambda: any(op.did_change() for op in present)


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
        logger.warning(f"{host.print_prefix}{note}")

    if not target.nvidia:
        logger.warning(f"{host.print_prefix}the fleet declares no NVIDIA GPU here: nothing to do")
        return
    smi = host.get_fact(NvidiaGpus)
    on_bus = [d for d in host.get_fact(NvidiaPciDevices) if d["kind"] == "gpu"]
    if not on_bus and smi["state"] != "ok":
        if target.declared and target.gpu_count:
            ops.problem(
                name="Declared GPUs are missing",
                message=f"the fleet declares {target.gpu_count} × {target.gpu_model} but the host "
                "has no NVIDIA device on its PCI bus: fix the declaration or the machine",
            )
        else:
            logger.warning(f"{host.print_prefix}no NVIDIA device on this host: nothing to do")
        return

    release = host.get_fact(OsRelease)
    try:
        if release is None:
            raise PolicyError("/etc/os-release is missing: cannot tell the distribution")
        directory, arch = nvidia.repository(
            release["id"], release["version_id"], host.get_fact(Arch)
        )
    except PolicyError as error:
        ops.problem(name="Unsupported host", message=str(error))
        return

    compute_capability = target.compute_capability
    if compute_capability is None and smi["state"] == "ok" and smi["gpus"][0]["compute_cap"]:
        major, _, minor = str(smi["gpus"][0]["compute_cap"]).partition(".")
        compute_capability = (int(major), int(minor or 0))
    choice = DriverChoice(target.branch, nvidia.flavour_for(compute_capability), directory)
    if reason := startup_problem(target, choice):
        ops.problem(name="Unsupported versions", message=reason)
        return

    installed = host.get_fact(NvidiaPackages)
    loaded = host.get_fact(NvidiaDriver)
    packaged = any(nvidia.package_branch(n, p["version"]) for n, p in installed.items())
    external = loaded is not None and not packaged
    if external and nvidia.branch_of(loaded["version"] if loaded else "") != target.branch:
        ops.problem(
            name="Driver installed outside apt",
            message=f"driver {loaded['version'] if loaded else '?'} was installed outside apt "
            f"(not branch {target.branch}); servekit does not replace a driver it did not "
            "install: remove it (`nvidia-uninstall`), or set versions.driver_branch to its branch",
        )
        return
    if external and loaded is not None:
        logger.warning(
            f"{host.print_prefix}driver {loaded['version']} ({loaded['flavour']}) was installed "
            "outside apt: servekit leaves it as it is"
        )

    driver_will_change = not external and (
        bool(nvidia.foreign_packages(installed, choice))
        or nvidia.installed_driver_version(installed, choice) is None
    )
    secure_boot = host.get_fact(SecureBoot)
    if driver_will_change and secure_boot["enabled"] and not secure_boot["enrolled_keys"]:
        ops.problem(
            name="Secure Boot blocks the driver",
            message="Secure Boot is on and no DKMS signing key is enrolled, so the driver "
            "modules DKMS builds would not load: enroll the key (`mokutil --import "
            "/var/lib/dkms/mok.pub`, reboot, confirm it at the console) and deploy again, or "
            "turn Secure Boot off",
        )
        return

    nvswitch = ops.nvswitch_present()
    systemd_runs = bool(host.get_fact(Directory, path="/run/systemd/system"))
    services_now = loaded is not None and not driver_will_change
    repository_url = nvidia.repository_url(target.mirror, directory, arch)
    rendered = {
        f.path: f
        for f in gpu_files(repository_url, nvidia.KEYRING_FILE, target.cuda_toolkit, systemd_runs)
    }
    kernel = host.get_fact(KernelHeaders)

    # NVIDIA's repository, one source for its packages, and apt's lists of it.
    keyring = ops.cuda_keyring(
        name="Install NVIDIA's repository key (cuda-keyring)",
        url=f"{repository_url}cuda-keyring_{nvidia.KEYRING_VERSION}_all.deb",
    )
    keyring_list = files.file(
        name="Remove cuda-keyring's own source list (servekit's names the mirror)",
        path=f"/etc/apt/sources.list.d/cuda-{directory}-{arch}.list",
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
    wanted = [] if external else list(choice.packages)
    if kernel and not kernel["headers_installed"] and not external:
        wanted.insert(0, kernel["headers_package"])
    if nvswitch:
        wanted += [choice.fabricmanager, choice.nscq]
    if wanted:
        ops.apt_knows(name="Make sure apt knows the packages to install", packages=wanted)

    nouveau = put(rendered[GPU_PATHS.nouveau], "Blacklist nouveau")
    ops.initramfs_updated(name="Rebuild the initramfs without nouveau", _if=nouveau.did_change)

    driver_ops: list[OperationMeta] = []
    if not external:
        if kernel:
            apt.packages(
                name=f"Install kernel headers for {kernel['release']} (DKMS builds the driver)",
                packages=[kernel["headers_package"]],
            )
        driver_ops.append(
            ops.other_drivers_removed(
                name="Remove NVIDIA drivers of other branches or sources",
                branch=choice.branch,
                flavour=choice.flavour,
                directory=choice.directory,
            )
        )
        for package in choice.packages:
            driver_ops.append(
                apt.packages(
                    name=f"Install {package} (driver branch {choice.branch}, {choice.flavour})",
                    packages=[package],
                    extra_install_args="--allow-change-held-packages",
                )
            )
    held = list(choice.packages) if not external else []
    if nvswitch:
        ops.fabric_manager(
            name="Install Fabric Manager and NSCQ at the driver's version",
            branch=choice.branch,
            flavour=choice.flavour,
            directory=choice.directory,
        )
        held += [choice.fabricmanager, choice.nscq]
    if held:
        ops.driver_held(name="Hold the NVIDIA driver packages", branch=choice.branch, also=held)
    put(rendered[GPU_PATHS.unattended_upgrades], "Keep NVIDIA packages out of unattended-upgrades")

    _persistence(rendered, systemd_runs and not external, services_now, loaded is not None)
    if nvswitch and systemd_runs:
        systemd.service(
            name="Enable Fabric Manager",
            service="nvidia-fabricmanager.service",
            enabled=True,
            running=True if services_now else None,
        )
    if target.cuda_toolkit:
        apt.packages(
            name=f"Install the CUDA {target.cuda_toolkit} toolkit",
            packages=[nvidia.toolkit_package(target.cuda_toolkit)],
        )
        put(rendered[GPU_PATHS.cuda_profile], "Put the CUDA toolkit on PATH")
    if target.dcgm:
        _dcgm(target, compute_capability, systemd_runs, services_now)

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
            reason="the NVIDIA driver changed" if not nouveau_loaded else "nouveau is loaded",
            _if=needs_reboot,
            _parallel=_reboot_batch(target.reboot_batch),
        )

    script = resources.files("servekit").joinpath("cuda_check.py")
    files.put(name="Upload the CUDA check", src=str(script), dest=CUDA_CHECK, mode="0755")
    skip_verify = target.local or not target.reboot
    ops.verified(
        name="Verify GPUs, driver, fabric and CUDA",
        target=target,
        script=CUDA_CHECK,
        _if=(lambda: not needs_reboot()) if skip_verify else None,
    )


def _persistence(
    rendered: dict[str, RenderedFile], units: bool, services_now: bool, loaded: bool
) -> None:
    """Persistence mode: nvidia-persistenced with --persistence-mode from boot on (systemd), or
    `nvidia-smi -pm 1` where no systemd runs the daemon."""
    if not units:
        if loaded:
            ops.persistence_mode(name="Turn persistence mode on")
        return
    dropin = put(rendered[GPU_PATHS.persistenced], "Run nvidia-persistenced in persistence mode")
    wanted = put(rendered[GPU_PATHS.persistenced_wanted], "Start nvidia-persistenced at boot")
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(dropin, wanted))
    if services_now:
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


def _dcgm(
    target: GpuTarget,
    compute_capability: tuple[int, int] | None,
    systemd_runs: bool,
    services_now: bool,
) -> None:
    apt.packages(
        name="Install DCGM 4 and its exporter",
        packages=nvidia.dcgm_packages(target.branch, compute_capability),
    )
    if not systemd_runs:
        logger.warning(f"{host.print_prefix}no systemd: start nv-hostengine and dcgm-exporter")
        return
    for service in ("nvidia-dcgm.service", "nvidia-dcgm-exporter.service"):
        systemd.service(
            name=f"Enable {service}",
            service=service,
            enabled=True,
            running=True if services_now else None,
        )


def _reboot_batch(wanted: int) -> int:
    """Hosts rebooted at once: as the fleet asks, but never the whole inventory together."""
    hosts = len(list(host.inventory.get_active_hosts()))
    return max(1, min(wanted, hosts - 1)) if hosts > 1 else 1


def _reboot_reminder(local: bool) -> None:
    where = "this machine (servekit never reboots @local)" if local else "the host"
    logger.warning(
        f"{host.print_prefix}the NVIDIA driver changed: reboot {where} to load it, then run "
        "this deploy again to verify"
    )
