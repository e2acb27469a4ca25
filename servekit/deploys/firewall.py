"""The firewall of vLLM hosts: an nftables table of servekit's own, loaded by a systemd unit.

`servekit-firewall.service` loads `/etc/servekit/firewall.nft` (rendered by `servekit.render`,
so `servekit render` shows it) at boot and whenever it changes. It replaces only the table
`inet servekit`: rules of ufw, Docker or the distribution stay untouched. Engine ports behind a
gateway answer only the gateway and monitoring hosts (and loopback); cluster ports answer only
the other nodes of the replica; everything else is left as it was. See `render.firewall_rules`.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api.deploy import deploy
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit.deploys.common import Commands
from servekit.deploys.hoststate import apply_files, differs, file_entry, stale, view
from servekit.hostplan import HostPlan
from servekit.render import FIREWALL_RULES, FIREWALL_UNIT, firewall_files

UNIT_FILE = f"/etc/systemd/system/{FIREWALL_UNIT}.service"


def firewall_spec(plan: HostPlan) -> dict[str, Any]:
    return {
        "packages": ["nftables"],
        "paths": [FIREWALL_RULES, UNIT_FILE],
        "units": [f"{FIREWALL_UNIT}.service"],
    }


@operation()
def nftables_package(spec: dict[str, Any]) -> Commands:
    """
    Install nftables (apt lists refreshed first) unless it is installed.

    + spec: what to read from the host (shared with the deploy that calls this)
    """
    state = view(spec)
    if (state.get("packages") or {}).get("nftables"):
        host.noop("nftables is installed")
        return
    yield (
        "export DEBIAN_FRONTEND=noninteractive && apt-get update -q && "
        "apt-get install -y -q --no-install-recommends nftables"
    )
    stale()


@operation()
def rules(plan: HostPlan, spec: dict[str, Any]) -> Commands:
    """
    Write the rules and their unit where they differ, and (re)load them when they changed or
    are not loaded.

    + plan: the host's plan (which ports, which addresses)
    + spec: what to read from the host (shared with the deploy that calls this)
    """
    state = view(spec)
    files = firewall_files(plan)
    changed = [f for f in files if differs(f, state["paths"].get(f.path))]
    unit = (state.get("units") or {}).get(f"{FIREWALL_UNIT}.service", {})
    loaded = unit.get("ActiveState") == "active" and unit.get("UnitFileState") == "enabled"
    if not changed and loaded:
        host.noop("firewall rules are loaded")
        return
    if changed:
        groups = [{"files": [file_entry(f) for f in changed], "backup": None}]
        yield apply_files({"groups": groups, "daemon_reload": True})
    yield f"systemctl enable --quiet {FIREWALL_UNIT} && systemctl restart {FIREWALL_UNIT}"
    stale()


def firewall_ops(plan: HostPlan, spec: dict[str, Any] | None = None) -> None:
    """The firewall's operations (inside another deploy: pass its `spec` to share one read)."""
    spec = spec or firewall_spec(plan)
    nftables_package(name="Install nftables", spec=spec)
    rules(name="Load the servekit firewall", plan=plan, spec=spec)


@deploy("servekit firewall")
def firewall_host() -> None:
    """Converge the firewall of a host with vLLM processes (nothing on other hosts)."""
    data = host.data.get("servekit")
    if data is None:
        return
    plan = HostPlan.from_host_data(data)
    if plan.vllm:
        firewall_ops(plan)
