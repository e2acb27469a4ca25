"""The gateway's part in a vLLM rollout: before a wave restarts running replicas, the gateway
host takes them out of rotation and waits for their requests to finish; after the wave's health
gate (and any rollback), it puts them back and waits until its own checks see them up.

Both run on the gateway host, in the wave loop of `servekit.deploys.vllm`: pyinfra finishes an
operation on every host before the next starts, so "drain (wave w)" happens after every host
staged wave w and before any restarts it. Scripts: `servekit.gateway.drain`.
"""

from __future__ import annotations

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit.gateway.drain import drain_script, enable_script, targets
from servekit.gateway.layout import GATEWAY
from servekit.hostplan import HostPlan
from servekit.operations.common import Commands
from servekit.operations.hoststate import announce, streamed
from servekit.operations.runstate import rollout, this_host


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


@operation(is_idempotent=False)
def drain_at_gateway(plan: HostPlan, wave: int) -> Commands:
    """
    On the gateway host: take the replicas this wave restarts out of rotation and wait, up to
    `gateway.drain_timeout`, for their requests to finish (nothing elsewhere, or when the wave
    restarts nothing the gateway routes to).

    + plan: the host's plan
    + wave: which rollout wave

    **Example:**

    .. code:: python

        drain_at_gateway(name=f"Drain at the gateway (wave {wave})", plan=plan, wave=wave)
    """
    gateway = plan.gateway
    found = targets(gateway, restarting(wave)) if gateway else []
    if gateway is None or not found:
        host.noop(f"no replica to drain in wave {wave}")
        return
    this_host().drained[wave] = found
    announce(f"drain {', '.join(t.name for t in found)} at the gateway")
    yield streamed(_sh(drain_script(found, GATEWAY.runtime_socket, gateway.drain_timeout)))


@operation(is_idempotent=False)
def enable_at_gateway(plan: HostPlan, wave: int) -> Commands:
    """
    On the gateway host: put the replicas drained in this wave back in rotation (restarted or
    rolled back, they passed their health gate) and wait until the gateway sees them up.

    + plan: the host's plan
    + wave: which rollout wave

    **Example:**

    .. code:: python

        enable_at_gateway(name=f"Re-enable at the gateway (wave {wave})", plan=plan, wave=wave)
    """
    found = this_host().drained.pop(wave, [])
    if not found:
        host.noop(f"no replica drained in wave {wave}")
        return
    announce(f"put {', '.join(t.name for t in found)} back in rotation at the gateway")
    yield streamed(_sh(enable_script(found, GATEWAY.runtime_socket)))
