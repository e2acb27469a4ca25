"""The GPU host deploy: NVIDIA's repository, the driver branch, Fabric Manager, persistence,
optional CUDA toolkit and DCGM, a reboot when the driver changed, and a verification at the end.

Decisions that depend on the host as it is before the deploy are taken once, in
`servekit.operations.gpu_survey`; the steps are `servekit.operations.gpu_steps`.
"""

from __future__ import annotations

from pyinfra.api.deploy import deploy
from pyinfra.connectors.local import LocalConnector
from pyinfra.context import host

from servekit import nvidia
from servekit.deploys.common import host_plan
from servekit.facts.nvidia import NvidiaGpus
from servekit.hostplan import HostPlan
from servekit.nvidia import GPU_PATHS, GpuTarget, gpu_files
from servekit.operations import gpu_steps as steps
from servekit.operations import nvidia as ops
from servekit.operations.gpu_survey import say, survey
from servekit.operations.rendered import put


def is_local() -> bool:
    return issubclass(host.connector_cls, LocalConnector)


def gpu_target(plan: HostPlan | None) -> GpuTarget:
    """The fleet's wishes for this host, or, without servekit data, what the facts allow."""
    if plan is not None:
        return nvidia.target_from_plan(plan, is_local())
    return nvidia.target_from_facts(host.name, host.get_fact(NvidiaGpus), is_local())


@deploy("NVIDIA GPU host")
def gpu_host() -> None:
    """
    Make this host ready for vLLM: the fleet's NVIDIA driver branch from NVIDIA's repository (or
    its mirror), held; Fabric Manager at the driver's exact version on NVSwitch hosts;
    persistence mode; optional CUDA toolkit and DCGM; a reboot when the driver changed; then a
    check that GPUs, driver, fabric and CUDA are what vLLM needs.
    """
    plan = host_plan()
    target = gpu_target(plan)
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
    sources = plan.sources if plan is not None else None
    if found.needs_repository and not steps.repository(found, rendered, sources):
        return
    nouveau = put(rendered[GPU_PATHS.nouveau], "Blacklist nouveau")
    ops.initramfs_updated(name="Rebuild the initramfs without nouveau", _if=nouveau.did_change)
    driver_ops = [] if found.external else steps.driver(found)
    steps.fabric_manager_and_holds(found)
    put(rendered[GPU_PATHS.unattended_upgrades], "Keep NVIDIA packages out of unattended-upgrades")
    steps.persistence(found, rendered)
    steps.cuda_toolkit(found, rendered)
    if target.dcgm:
        steps.dcgm(found)
    needs_reboot = steps.reboot(found, driver_ops)
    steps.verification(found, needs_reboot)
