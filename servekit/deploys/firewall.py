"""The firewall deploy: servekit's nftables table on hosts with vLLM processes or an exposed
Ollama (the operations are in `servekit.operations.firewall`)."""

from __future__ import annotations

from typing import Any

from pyinfra.api.deploy import deploy

from servekit.deploys.common import host_plan
from servekit.firewall import needs_firewall
from servekit.hostplan import HostPlan
from servekit.operations.firewall import firewall_spec, nftables_package, rules


def firewall_ops(plan: HostPlan, spec: dict[str, Any] | None = None, **arguments: Any) -> None:
    """The firewall's operations (inside another deploy: pass its `spec` to share one read;
    `arguments` are pyinfra's global arguments such as `_sudo`)."""
    spec = spec or firewall_spec(plan)
    nftables_package(name="Install nftables", spec=spec, **arguments)
    rules(name="Load the servekit firewall", plan=plan, spec=spec, **arguments)


@deploy("servekit firewall")
def firewall_host() -> None:
    """Converge the firewall of a host with vLLM processes or an exposed Ollama."""
    plan = host_plan()
    if plan is not None and needs_firewall(plan):
        firewall_ops(plan)
