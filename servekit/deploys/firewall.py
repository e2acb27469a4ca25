"""The firewall deploy: servekit's nftables table on hosts with vLLM processes or an exposed
Ollama (the operations are in `servekit.operations.firewall`)."""

from __future__ import annotations

from pyinfra.api.deploy import deploy

from servekit.deploys.common import host_plan
from servekit.firewall import needs_firewall
from servekit.operations.firewall import firewall_ops


@deploy("servekit firewall")
def firewall_host() -> None:
    """Converge the firewall of a host with vLLM processes or an exposed Ollama."""
    plan = host_plan()
    if plan is not None and needs_firewall(plan):
        firewall_ops(plan)
