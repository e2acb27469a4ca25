"""The GPU host's steps, each a group of operations over a `Survey` of the host: NVIDIA's
repository, the driver, Fabric Manager and the holds, persistence mode, DCGM, the reboot, and the
verification at the end. `servekit.deploys.gpu` runs them in order.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from pyinfra.api.operation import OperationMeta
from pyinfra.context import host
from pyinfra.facts.server import KernelModules
from pyinfra.operations import apt, files, python, systemd

from servekit import nvidia
from servekit.credentials import APT_AUTH_FILE
from servekit.hostplan import SourcesPlan
from servekit.nvidia.host_files import GPU_PATHS, PERSISTENCED_UNIT
from servekit.operations import nvidia as ops
from servekit.operations.credentials import mirror_login_files
from servekit.operations.gpu_survey import Survey, say
from servekit.operations.rendered import any_changed, put
from servekit.templating import RenderedFile

CUDA_CHECK = "/usr/local/lib/servekit/cuda_check.py"
"""Where the CUDA check (servekit/cuda_check.py) is uploaded on the host."""


def repository(
    found: Survey, rendered: dict[str, RenderedFile], sources: SourcesPlan | None
) -> bool:
    """NVIDIA's repository with its key, preferred for its packages, and apt's lists of it;
    False when the host stopped (its mirror credentials cannot be read).

    + sources: the fleet's sources for this host (mirrors, their logins), or none without a plan
    """
    # apt (and apt-helper, which fetches the key package) read mirror logins from auth.conf.d
    if mirror_login_files(sources, [(APT_AUTH_FILE, "apt")]) is None:
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
    source_list = put(rendered[GPU_PATHS.sources], "Add NVIDIA's CUDA repository")
    preferences = put(
        rendered[GPU_PATHS.preferences], "Prefer NVIDIA's repository for its packages"
    )
    apt.update(
        name="Update apt after repository changes",
        _if=any_changed(keyring, keyring_list, source_list, preferences),
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


def driver(found: Survey) -> list[OperationMeta]:
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


def fabric_manager_and_holds(found: Survey) -> None:
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


def persistence(found: Survey, rendered: dict[str, RenderedFile]) -> None:
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
                service=PERSISTENCED_UNIT,
                running=None,
                restarted=True,
                _if=dropin.did_change,
            )
            systemd.service(
                name="Start nvidia-persistenced",
                service=PERSISTENCED_UNIT,
                running=True,
            )
    if found.nvswitch and found.systemd:
        systemd.service(
            name="Enable Fabric Manager",
            service="nvidia-fabricmanager.service",
            enabled=True,
            running=True if found.services_now else None,
        )


def cuda_toolkit(found: Survey, rendered: dict[str, RenderedFile]) -> None:
    """The fleet's CUDA toolkit from NVIDIA's repository, on every login shell's PATH."""
    toolkit = found.target.cuda_toolkit
    if not toolkit:
        return
    apt.packages(
        name=f"Install the CUDA {toolkit} toolkit",
        packages=[nvidia.toolkit_package(toolkit)],
    )
    put(rendered[GPU_PATHS.cuda_profile], "Put the CUDA toolkit on PATH")


def dcgm(found: Survey) -> None:
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


def reboot(found: Survey, driver_ops: list[OperationMeta]) -> Callable[[], bool]:
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
            _parallel=reboot_batch(target.reboot_batch),
        )
    return needs_reboot


def reboot_batch(wanted: int) -> int:
    """Hosts rebooted at once: as the fleet asks, but never the whole inventory together."""
    hosts = len(host.inventory.get_active_hosts())
    return max(1, min(wanted, hosts - 1)) if hosts > 1 else 1


def _reboot_reminder(local: bool) -> None:
    where = "this machine (servekit never reboots @local)" if local else "the host"
    say(f"the NVIDIA driver changed: reboot {where} to load it, then run this deploy again")


def verification(found: Survey, needs_reboot: Callable[[], bool]) -> None:
    """Upload the CUDA check and verify GPUs, driver, fabric and CUDA; skipped when a reboot is
    needed that this run does not do (@local, or reboots turned off)."""
    target = found.target
    script = resources.files("servekit").joinpath("cuda_check.py")
    files.put(name="Upload the CUDA check", src=str(script), dest=CUDA_CHECK, mode="0755")
    rebooted_here = not (target.local or not target.reboot)
    ops.verified(
        name="Verify GPUs, driver, fabric and CUDA",
        target=target,
        script=CUDA_CHECK,
        _if=None if rebooted_here else (lambda: not needs_reboot()),
    )
