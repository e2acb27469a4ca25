"""vLLM on GPU servers: install, weights, configuration, serving, multi-node, upgrades.

`vllm_host()` is the pyinfra deploy `deploys/vllm.py` runs on every host of a fleet. On a host
whose plan (`servekit.deploys.common.host_plan`) has vLLM processes it converges, in this order:

1. Debian packages (python3-venv for uv's bootstrap, nftables for the firewall);
2. the `vllm` system user and its directories (caches under /var/lib/vllm, configs in /etc/vllm);
3. uv, then one virtualenv per pinned vLLM version (/opt/vllm/venvs/<version>) with the CUDA build
   the host's driver runs (refused, naming the alternatives, when the driver is too old);
4. the weights, downloaded as the service user before anything starts (Hugging Face or S3), or
   checked (a local path);
5. the firewall (`servekit.operations.firewall`);
6. for Ray-backed replicas: the Ray head, then the Ray workers, then a wait until `ray status`
   lists every node;
7. units servekit wrote earlier that the plan no longer has are stopped and removed;
8. the vLLM processes: configs, env files and units written where they differ, then started or
   restarted in waves (`servekit.vllm_rollout`): replicas that are not running start together
   (headless workers before their head); running replicas whose configuration or venv changed
   restart one replica index at a time, each gated on `/health`, and return to their previous
   files (and so venv) if they fail. The gateway host (when the run includes it) drains each
   rolling replica before its restart and puts it back after its gate
   (`servekit.operations.gateway_drain`), so clients of the gateway see no failed request;
9. `current` (and `previous`) venv links, older venvs removed, and a report: the run fails on
   hosts whose rollout failed, saying what happened.

The operations are in `servekit.operations` (vllm_install, vllm_weights, ray, vllm_units,
vllm_rollback, firewall). Known limit: a Ray-backed replica's Ray nodes restart (new venv,
changed unit) before its vLLM process rolls, and are not rolled back with it.

Every step reads the host's state once (`servekit.operations.hoststate.view`) and does nothing
when it matches, so a second run changes nothing and costs one command per host; `--dry` lists,
per host, the files and units a run would change.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host

from servekit import secrets
from servekit.credentials import NETRC_FILE
from servekit.deploys.common import host_plan
from servekit.hostplan import HostPlan
from servekit.operations.common import each, problem
from servekit.operations.credentials import mirror_login_files
from servekit.operations.firewall import firewall_ops
from servekit.operations.gateway_drain import drain_at_gateway, enable_at_gateway
from servekit.operations.ray import ray_cluster, ray_nodes
from servekit.operations.vllm_install import packages, service_user, tools_venv, uv_tool, vllm_venv
from servekit.operations.vllm_rollback import finish, roll_back
from servekit.operations.vllm_units import classify, prune, stage, start_servers, start_workers
from servekit.operations.vllm_weights import weights
from servekit.operations.vllm_work import HostWork, host_work
from servekit.render import render_host
from servekit.secrets import SecretError


@deploy("vLLM")
def vllm_host() -> None:
    """Converge this host's vLLM processes from its servekit plan (nothing without one); on the
    gateway host, drain and re-enable the replicas each rollout wave restarts."""
    plan = host_plan()
    if plan is None:
        logger.warning(f"{host.name}: no servekit plan in host data; skipping vLLM")
        return
    if not plan.vllm and plan.gateway is None:
        return
    waves = plan.gateway.waves if plan.gateway else 0
    if plan.vllm:
        work = install(plan)
        if work is None:
            return
        waves = max(waves, work.waves)
    for wave in each(range(waves)):
        stage(name=f"Write vLLM files (wave {wave})", plan=plan, wave=wave)
        drain_at_gateway(name=f"Drain at the gateway (wave {wave})", plan=plan, wave=wave)
        start_workers(name=f"Start vLLM workers (wave {wave})", plan=plan, wave=wave)
        start_servers(name=f"Start vLLM servers (wave {wave})", plan=plan, wave=wave)
        roll_back(name=f"Roll back failures (wave {wave})", plan=plan, wave=wave)
        enable_at_gateway(name=f"Re-enable at the gateway (wave {wave})", plan=plan, wave=wave)
    if plan.vllm:
        finish(name="Finish the vLLM rollout", plan=plan)


def install(plan: HostPlan) -> HostWork | None:
    """Every step before the rollout waves (steps 1 to 7); None after stopping the host."""
    work = host_work(plan)
    try:
        render_host(plan, secret=secrets.read_secret)
    except SecretError as error:
        problem(name="Read the fleet's secrets", message=str(error))
        return None
    packages(name="Install Debian packages", plan=plan)
    service_user(name="Create the vllm user and directories", plan=plan)
    if mirror_login_files(plan.sources, [(NETRC_FILE, "netrc")]) is None:
        return None
    uv_tool(name="Install uv", plan=plan)
    vllm_venv(name="Install the vLLM venv", plan=plan)
    if work.tools:
        tools_venv(name="Install the weights tools", plan=plan)
    for location in each(work.weights):
        weights(name="Fetch the weights", plan=plan, location=location)
    firewall_ops(plan, spec=work.spec())
    if work.ray:
        ray_nodes(name="Start the Ray head", plan=plan, head=True)
        ray_nodes(name="Start the Ray workers", plan=plan, head=False)
        ray_cluster(name="Wait for the Ray cluster", plan=plan)
    prune(name="Remove units no longer planned", plan=plan)
    classify(name="Inspect the vLLM processes", plan=plan)
    return work
