"""The Ollama deploy: a pinned Ollama release run as a service, and the fleet's models.

- **Linux** (Debian, Ubuntu; x86_64, arm64): `servekit.operations.ollama_linux`, a system service
  run by an `ollama` user, restarted only after a change.
- **macOS** (SSH or `@local`, never sudo): `servekit.operations.ollama_macos`, a LaunchAgent in the
  login user's home.
- **Models**: pulled through the API on the host (only the missing ones), undeclared ones deleted
  with `prune`.
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
from servekit.operations.common import problem
from servekit.operations.ollama import release_source_problem
from servekit.operations.ollama_linux import linux_service, retire_service
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
    settings = plan.ollama
    if settings is None:
        if plan.os != "macos" and host.get_fact(Kernel) == "Linux":
            retire_service(plan.sudo)
        else:
            logger.warning(f"{host.print_prefix}the fleet serves no Ollama model here")
        return
    base_url = plan.sources.ollama_releases
    if reason := release_source_problem(base_url):
        problem(name="Ollama release mirror", message=reason)
        return
    kernel = host.get_fact(Kernel)
    expected = "Darwin" if plan.os == "macos" else "Linux"
    if kernel != expected:
        problem(
            name="Operating system",
            message=f"the fleet declares os={plan.os!r} for {plan.name!r} but the host runs "
            f"{kernel}: fix the machine's os in the fleet",
        )
        return
    # Linux changes the system (sudo unless root); macOS the user's home, never with sudo.
    if plan.os == "macos":
        macos_agent(plan, settings, base_url)
    else:
        linux_service(plan, settings, base_url, plan.sudo)
