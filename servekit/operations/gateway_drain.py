"""The gateway's part in a rollout: before a wave restarts running replicas, the gateway host
takes them out of rotation and waits for their requests to finish; after the wave's health gate
(and any rollback), it puts them back and waits until its own checks see them up.

They run on the gateway host, in the wave loops of `servekit.deploys.vllm` (replica index r
restarts in wave r + 1) and `servekit.deploys.ollama` (one Ollama host a wave). Every host runs
the loop, and pyinfra makes a step called at the same place on several hosts one node of its
order: "drain (wave w)" runs after every host staged wave w and before any restarts it.
Scripts: `servekit.gateway.drain`.
"""

from __future__ import annotations

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit.gateway.drain import drain_script, enable_script, targets
from servekit.gateway.layout import GATEWAY
from servekit.hostplan import GatewayHost, HostPlan
from servekit.operations.common import Commands
from servekit.operations.hoststate import announce, streamed
from servekit.operations.runstate import rollout, this_host, this_pass


def restarting(wave: int) -> list[tuple[str, int]]:
    """The (serve, replica) pairs a rolling wave restarts: running replicas whose files the
    wave staged (wave 0 only starts replicas that serve nothing yet)."""
    if wave == 0:
        return []
    return [
        (replica.serve, replica.replica)
        for replica in rollout().replicas.values()
        if replica.wave == wave and any(p.staged for p in replica.processes)
    ]


def _sh(script: str) -> StringCommand:
    return StringCommand("sh", "-c", QuoteString(script))


def restarting_ollama(gateway: GatewayHost, wave: int) -> list[tuple[str, int]]:
    """The (serve, replica) pairs of the Ollama host restarting in `wave`, if it restarts."""
    if wave >= len(gateway.ollama_hosts):
        return []
    name = gateway.ollama_hosts[wave]
    if name not in this_pass().ollama_restarts:
        return []
    members = gateway.members
    return [(m.serve, m.replica) for m in members if m.engine == "ollama" and m.host == name]


def _drain(plan: HostPlan, key: str, replicas: list[tuple[str, int]]) -> Commands:
    gateway = plan.gateway
    found = targets(gateway, replicas) if gateway else []
    if gateway is None or not found:
        host.noop(f"no replica to drain ({key})")
        return
    this_host().drained[key] = found
    announce(f"drain {', '.join(t.name for t in found)} at the gateway")
    yield streamed(_sh(drain_script(found, GATEWAY.runtime_socket, gateway.drain_timeout)))


def _enable(key: str) -> Commands:
    found = this_host().drained.pop(key, [])
    if not found:
        host.noop(f"no replica drained ({key})")
        return
    announce(f"put {', '.join(t.name for t in found)} back in rotation at the gateway")
    yield streamed(_sh(enable_script(found, GATEWAY.runtime_socket)))


@operation(is_idempotent=False)
def drain_at_gateway(plan: HostPlan, wave: int) -> Commands:
    """
    On the gateway host: take the vLLM replicas this wave restarts out of rotation and wait, up
    to `gateway.drain_timeout`, for their requests to finish (nothing elsewhere, or when the
    wave restarts nothing the gateway routes to).

    + plan: the host's plan
    + wave: which vLLM rollout wave

    **Example:**

    .. code:: python

        drain_at_gateway(name=f"Drain at the gateway (wave {wave})", plan=plan, wave=wave)
    """
    yield from _drain(plan, f"vllm {wave}", restarting(wave))


@operation(is_idempotent=False)
def enable_at_gateway(plan: HostPlan, wave: int) -> Commands:
    """
    On the gateway host: put the vLLM replicas drained in this wave back in rotation (restarted
    or rolled back, they passed their health gate) and wait until the gateway sees them up.

    + plan: the host's plan
    + wave: which vLLM rollout wave

    **Example:**

    .. code:: python

        enable_at_gateway(name=f"Re-enable at the gateway (wave {wave})", plan=plan, wave=wave)
    """
    yield from _enable(f"vllm {wave}")


@operation(is_idempotent=False)
def ollama_will_restart() -> Commands:
    """
    Note that this Ollama host restarts after a change in this run, so that the gateway drains
    it first; runs no command. Call it with `_if=` the restart's condition.

    **Example:**

    .. code:: python

        ollama_will_restart(name="Note the restart for the gateway", _if=needed)
    """
    this_pass().ollama_restarts.add(host.name)
    host.noop("the gateway drains this host before its restart")
    return
    yield  # an operation: nothing to run


@operation(is_idempotent=False)
def drain_ollama_at_gateway(plan: HostPlan, wave: int) -> Commands:
    """
    On the gateway host: take the Ollama host restarting in this wave out of rotation and wait
    for its requests to finish (nothing when it does not restart).

    + plan: the host's plan
    + wave: which Ollama rollout wave (`GatewayHost.ollama_hosts` index)

    **Example:**

    .. code:: python

        drain_ollama_at_gateway(name=f"Drain Ollama at the gateway (wave {wave})", plan=plan,
                                wave=wave)
    """
    replicas = restarting_ollama(plan.gateway, wave) if plan.gateway else []
    yield from _drain(plan, f"ollama {wave}", replicas)


@operation(is_idempotent=False)
def enable_ollama_at_gateway(plan: HostPlan, wave: int) -> Commands:
    """
    On the gateway host: put the Ollama host drained in this wave back in rotation, once its
    API answers again, and wait until the gateway sees it up.

    + plan: the host's plan
    + wave: which Ollama rollout wave

    **Example:**

    .. code:: python

        enable_ollama_at_gateway(name=f"Re-enable Ollama at the gateway (wave {wave})",
                                 plan=plan, wave=wave)
    """
    yield from _enable(f"ollama {wave}")
