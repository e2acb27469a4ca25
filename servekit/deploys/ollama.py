"""The Ollama deploy: a pinned Ollama release run as a service, and the fleet's models.

- **Linux** (Debian, Ubuntu; x86_64, arm64): `servekit.operations.ollama_linux`, a system service
  run by an `ollama` user, restarted only after a change.
- **macOS** (SSH or `@local`, never sudo): `servekit.operations.ollama_macos`, a LaunchAgent in the
  login user's home.
- **Models**: pulled through the API on the host (only the missing ones), undeclared ones deleted
  with `prune`.
- **Restarts** after a change (a new release, settings): with a gateway in front, one Ollama host
  at a time, in fleet order, each drained at the gateway first and put back once its API answers
  (`servekit.operations.gateway_drain`; the gateway host takes part in the run).
- **Retirement**: on a Linux host whose plan no longer serves any Ollama model (a model moved to
  vLLM), servekit's `ollama.service` is stopped and disabled; binary and models stay. Run it
  after the gateway routes elsewhere: `pyinfra INVENTORY deploys/vllm.py deploys/gateway.py
  deploys/ollama.py`.

Where the settings come from, in order: the host's servekit data (an inventory that calls
`pyinfra_groups`); else a fleet file named by `--data servekit_fleet=PATH` or `$SERVEKIT_FLEET`;
else the deploy's default (`inventories/laptop.py`): see `servekit.fleetfile`. The deploy says
which it used.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host
from pyinfra.facts.server import Kernel

from servekit.fleetfile import find_host_plan
from servekit.hostplan import HostPlan, OllamaHost
from servekit.operations.common import barrier, each, problem
from servekit.operations.gateway_drain import drain_ollama_at_gateway, enable_ollama_at_gateway
from servekit.operations.ollama import release_source_problem
from servekit.operations.ollama_linux import (
    PendingRestart,
    linux_service,
    restart_and_sync,
    retire_service,
)
from servekit.operations.ollama_macos import macos_agent


@deploy("Ollama")
def ollama_host(default_fleet: str | None = None) -> None:
    """
    Install the fleet's pinned Ollama on this host, run it as a service, and sync its models.

    + default_fleet: the fleet file to read when the host carries no servekit data and none is
      named (`deploys/ollama.py` passes `inventories/laptop.py`)
    """
    plan, source = find_host_plan(default_fleet)
    logger.info(f"{host.print_prefix}servekit: Ollama settings from {source}")
    pending = None
    if plan.ollama is None or plan.gateway is not None:
        # a retirement waits for the gateway's reload (deploys/gateway.py given before this
        # file in the same run): the gateway host and the retiring hosts share this step
        barrier(name="Wait for the earlier steps on every host", _sudo=False)
    if plan.ollama is None:
        if plan.os != "macos" and host.get_fact(Kernel) == "Linux":
            retire_service(plan.sudo)
        else:
            logger.warning(f"{host.print_prefix}the fleet serves no Ollama model here")
    else:
        ok, pending = prepare(plan, plan.ollama)
        if not ok:
            return
    restart_in_waves(plan, pending)


def prepare(plan: HostPlan, settings: OllamaHost) -> tuple[bool, PendingRestart | None]:
    """Every step up to the restart a change needs (all of them on macOS), and that restart
    (Linux); False when a step stopped the host."""
    base_url = plan.sources.ollama_releases
    if reason := release_source_problem(base_url):
        problem(name="Ollama release mirror", message=reason)
        return False, None
    kernel = host.get_fact(Kernel)
    expected = "Darwin" if plan.os == "macos" else "Linux"
    if kernel != expected:
        problem(
            name="Operating system",
            message=f"the fleet declares os={plan.os!r} for {plan.name!r} but the host runs "
            f"{kernel}: fix the machine's os in the fleet",
        )
        return False, None
    # Linux changes the system (sudo unless root); macOS the user's home, never with sudo.
    if plan.os == "macos":
        macos_agent(plan, settings, base_url)
        return True, None
    pending = linux_service(plan, settings, base_url, plan.sudo)
    return pending is not None, pending


def restart_in_waves(plan: HostPlan, pending: PendingRestart | None) -> None:
    """Restarts after a change, one Ollama host a wave when a gateway is in front: the gateway
    host drains the host first and re-enables it once its API answers."""
    waves = plan.ollama.waves if plan.ollama else 0
    if plan.gateway is not None:
        waves = max(waves, len(plan.gateway.ollama_hosts))
    if waves == 0:  # no gateway in front
        if pending is not None:
            restart_and_sync(pending)
        return
    for wave in each(range(waves)):
        drain_ollama_at_gateway(
            name=f"Drain Ollama at the gateway (wave {wave})", plan=plan, wave=wave
        )
        if pending is not None and plan.ollama is not None and plan.ollama.wave == wave:
            restart_and_sync(pending)
        enable_ollama_at_gateway(
            name=f"Re-enable Ollama at the gateway (wave {wave})", plan=plan, wave=wave
        )
