"""Ports on a host: which service holds which port or range, and the rules a new claim must keep
(no port shared, no range overlapped, never the SSH port, never a privileged port for an engine).
"""

from __future__ import annotations

from dataclasses import dataclass

from servekit.errors import Problem
from servekit.spec import (
    DCGM_EXPORTER_PORT,
    NODE_EXPORTER_PORT,
    OLLAMA_PORT,
    VLLM_PORT,
    Fleet,
    SshHost,
)

# Engines run as unprivileged users (vLLM as `vllm`, Ollama as `ollama`: servekit/deploys) and
# cannot bind a port below 1024 without a capability servekit never grants.
UNPRIVILEGED_USER = {"vllm": "vllm", "ollama": "ollama"}


@dataclass(frozen=True)
class PortClaim:
    """Ports [low, high] one service holds on a host, and the field that declared them."""

    low: int
    high: int
    what: str
    field: str

    def overlaps(self, other: PortClaim) -> bool:
        return self.low <= other.high and other.low <= self.high

    def describe(self) -> str:
        span = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"{self.what} ({span}, {self.field})"


def ssh_claim(fleet: Fleet, host: str) -> PortClaim:
    """The host's SSH port: no service may take it (the firewall never closes it)."""
    machine = fleet.machine_of(host)
    index = fleet.machines.index(machine)
    if isinstance(machine, SshHost):
        return PortClaim(machine.ssh_port, machine.ssh_port, "SSH", f"machines[{index}].ssh_port")
    return PortClaim(22, 22, "SSH", f"machines[{index}]")


def service_claims(fleet: Fleet, host: str, *, has_gpus: bool) -> list[PortClaim]:
    """Ports a host holds before any model is placed: SSH, and the exporters Prometheus scrapes
    on every host (DCGM's on GPU hosts)."""
    claims = [ssh_claim(fleet, host)]
    if fleet.monitoring is not None:
        claims.append(
            PortClaim(NODE_EXPORTER_PORT, NODE_EXPORTER_PORT, "node exporter", "monitoring")
        )
        if fleet.gpu_setup.dcgm and has_gpus:
            claims.append(
                PortClaim(DCGM_EXPORTER_PORT, DCGM_EXPORTER_PORT, "DCGM exporter", "gpu_setup.dcgm")
            )
    return claims


def privileged_port(claim: PortClaim, engine: str) -> Problem:
    port = claim.low
    return Problem(
        claim.field,
        f"port {port} is privileged (below 1024) and {engine} runs as the "
        f"unprivileged user {UNPRIVILEGED_USER[engine]!r}",
        "use a port from 1024 up (the default is "
        f"{OLLAMA_PORT if engine == 'ollama' else VLLM_PORT}); put the gateway in "
        "front for a well-known port",
    )


def takes_ssh(host: str, claim: PortClaim, ssh: PortClaim, *, ssh_host: bool) -> Problem:
    """A claim over the host's SSH port: the service could never be reached through the
    firewall, and the operator could be locked out."""
    ssh_field = ssh.field if ssh_host else f"{ssh.field}.ssh_port"
    ranged = claim.low != claim.high
    return Problem(
        ssh.field if ranged and ssh.field.endswith("ssh_port") else claim.field,
        f"{claim.describe()} on {host!r} would take its SSH port {ssh.low}; "
        "the firewall keeps SSH open, so the service could never be reached "
        "and the operator could be locked out",
        (f"move SSH out of {claim.low}-{claim.high} ({ssh_field}), or use distributed_backend='mp'")
        if ranged
        else f"give {claim.field} another port than {ssh.low}",
    )


def port_problems(
    host: str, claim: PortClaim, held: list[PortClaim], *, engine: str | None, ssh_host: bool
) -> list[Problem]:
    """Why `claim` cannot join the ports `held` on the host (empty when it can)."""
    problems: list[Problem] = []
    if engine is not None and claim.low < 1024:
        problems.append(privileged_port(claim, engine))
    for other in held:
        if other.what == claim.what or not other.overlaps(claim):
            continue
        if other.what == "SSH":
            problems.append(takes_ssh(host, claim, other, ssh_host=ssh_host))
            continue
        problems.append(
            Problem(
                claim.field,
                f"port {claim.low if claim.low == claim.high else claim.describe()} on "
                f"{host!r} is also used by {other.describe()}",
                "give each service on a host its own port",
            )
        )
    return problems
