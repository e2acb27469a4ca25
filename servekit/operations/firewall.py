"""The firewall of vLLM hosts and exposed Ollama hosts: an nftables table of servekit's own,
loaded by a systemd unit that the engines require.

`servekit-firewall.service` loads `/etc/servekit/firewall.nft` (rendered by `servekit.firewall`,
so `servekit render` shows it) at boot, before the engines, which `Requires=` it: if the rules do
not load, no engine starts unprotected. It replaces only the table `inet servekit`: rules of ufw,
Docker or the distribution stay untouched. See `servekit.firewall` for what the rules admit.

New rules are loaded "commit confirmed": the host saves its current table and rules file, arms
`servekit-firewall-rollback.timer` (the previous rules come back by themselves 60 s later), loads
the new rules with `systemctl reload` (a restart would restart the engines that require the
unit), and then the control machine opens a fresh SSH connection with the host's connection
settings. Only that connection disarms the timer; when it fails, the run fails for the host
saying so, and the host restores the previous rules on its own. A run with nothing to change
runs no command here beyond the shared state read.

The operations take the `spec` of the host state they read: a deploy that reads more of the
host (the vLLM deploy) passes its own, so one read serves both.
"""

from __future__ import annotations

from typing import Any

from pyinfra import logger
from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit.firewall import (
    FIREWALL_RULES,
    FIREWALL_UNIT,
    NFT,
    PREVIOUS_RULES,
    PREVIOUS_TABLE,
    ROLLBACK_AFTER_S,
    ROLLBACK_DIR,
    ROLLBACK_UNIT,
    TABLE,
    firewall_files,
)
from servekit.hostplan import HostPlan
from servekit.operations.common import Commands
from servekit.operations.debian import apt_install_command
from servekit.operations.hoststate import (
    announce,
    apply_files,
    connector_arguments,
    differs,
    file_entry,
    stale,
    view,
)


def firewall_spec(plan: HostPlan) -> dict[str, Any]:
    """What the firewall's operations read from the host (when no deploy passes its own)."""
    return {
        "packages": ["nftables"],
        "paths": [f.path for f in firewall_files(plan)],
        "units": [f"{FIREWALL_UNIT}.service"],
    }


def save_previous() -> str:
    """Keep what the rollback restores: the live table (or its absence) and the rules file."""
    return (
        f"install -d -m 0700 {ROLLBACK_DIR} && "
        f"{{ printf 'table {TABLE} {{}}\\ndelete table {TABLE}\\n'; "
        f"{NFT} list table {TABLE} 2>/dev/null || true; }} > {PREVIOUS_TABLE} && "
        f"if [ -e {FIREWALL_RULES} ]; then cp -p {FIREWALL_RULES} {PREVIOUS_RULES}; "
        f"else rm -f {PREVIOUS_RULES}; fi"
    )


LOAD = (
    f"systemctl restart {ROLLBACK_UNIT}.timer && systemctl enable --quiet {FIREWALL_UNIT} && "
    f"systemctl reload-or-restart {FIREWALL_UNIT}"
)
"""Arm the rollback, then load the new rules (reload: the engines that require the unit stay)."""
DISARM = f"systemctl stop {ROLLBACK_UNIT}.timer"


def _where(host: Any) -> str:
    address = host.data.get("ssh_hostname") or host.name
    return f"{address} port {host.data.get('ssh_port') or 22}"


def _fresh_connection(
    state: Any, host: Any, connector: dict[str, Any], command: str
) -> tuple[bool, str]:
    """Open a new connection to the host with its connection settings (a new TCP connection
    for SSH) and run `command` through it. Returns (worked, why not)."""
    fresh = type(host.connector)(state, host)
    try:
        fresh.connect()
        ok, output = fresh.run_shell_command(StringCommand(command), **connector)
        if not ok:
            return False, "; ".join(line.line for line in output.combined_lines) or command
        return True, ""
    except Exception as error:
        return False, f"{type(error).__name__}: {error}"
    finally:
        client = getattr(fresh, "client", None)
        if client is not None:
            client.close()


def _commit(state: Any, host: Any, connector: dict[str, Any]) -> bool:
    """Arm the rollback and load the rules over the deploy's connection, then confirm them over
    a fresh one; report clearly when that is impossible."""
    promise = f"the host restores the previous firewall rules within {ROLLBACK_AFTER_S} s by itself"
    try:
        loaded, _output = host.run_shell_command(
            StringCommand(LOAD), print_output=True, **connector
        )
        lost = ""
    except Exception as error:  # the deploy's own connection may be what the rules cut
        loaded, lost = False, f"{type(error).__name__}: {error}"
    if loaded:
        confirmed, why = _fresh_connection(state, host, connector, DISARM)
        if confirmed:
            return True
        message = (
            f"after loading the new firewall rules, a new SSH connection to {_where(host)} "
            f"failed ({why}); {promise}. The rules cut SSH (is the SSH port forwarded to a "
            f"protected port?): check {FIREWALL_RULES}, then run the deploy again"
        )
    else:
        # Rules nft refused change nothing live; the timer still puts the previous file back.
        reachable, why = _fresh_connection(state, host, connector, "true")
        if reachable:
            message = (
                f"the new firewall rules did not load ({lost or 'output above'}); {promise}. "
                f"Check {FIREWALL_RULES} with `nft -c -f`, then run the deploy again"
            )
        else:
            message = (
                f"the SSH connection broke while loading the new firewall rules "
                f"({lost or 'no answer'}) and a new SSH connection to {_where(host)} "
                f"failed ({why}); {promise}. "
                f"The rules cut SSH (is the SSH port forwarded to a protected port?): check "
                f"{FIREWALL_RULES}, then run the deploy again"
            )
    logger.error(f"{host.print_prefix}servekit: {host.name}: {message}")
    return False


@operation()
def nftables_package(spec: dict[str, Any]) -> Commands:
    """
    Install nftables (apt lists refreshed first) unless it is installed.

    + spec: what to read from the host (shared with the deploy that calls this)

    **Example:**

    .. code:: python

        nftables_package(name="Install nftables", spec=firewall_spec(plan))
    """
    state = view(spec)
    if (state.get("packages") or {}).get("nftables"):
        host.noop("nftables is installed")
        return
    announce("install the Debian package nftables")
    yield apt_install_command(["nftables"])
    stale()


@operation()
def rules(plan: HostPlan, spec: dict[str, Any]) -> Commands:
    """
    Write the rules and their units where they differ, and load them "commit confirmed" when
    they changed or are not loaded.

    + plan: the host's plan (which ports, which addresses)
    + spec: what to read from the host (shared with the deploy that calls this)

    **Example:**

    .. code:: python

        rules(name="Load the servekit firewall", plan=plan, spec=firewall_spec(plan))
    """
    state = view(spec)
    files = firewall_files(plan)
    changed = [f for f in files if differs(f, state["paths"].get(f.path))]
    unit = (state.get("units") or {}).get(f"{FIREWALL_UNIT}.service", {})
    loaded = unit.get("ActiveState") == "active" and unit.get("UnitFileState") == "enabled"
    if not changed and loaded:
        host.noop("firewall rules are loaded")
        return
    announce(*(f"write {f.path}" for f in changed), f"load the firewall rules ({FIREWALL_UNIT})")
    yield save_previous()
    if changed:
        groups = [{"files": [file_entry(f) for f in changed], "backup": None}]
        yield apply_files({"groups": groups, "daemon_reload": True})
    yield FunctionCommand(_commit, (connector_arguments(),), {})
    stale()


def firewall_ops(plan: HostPlan, spec: dict[str, Any] | None = None, **arguments: Any) -> None:
    """The firewall's operations, for a deploy to call (inside another deploy: pass its `spec`
    to share one read; `arguments` are pyinfra's global arguments such as `_sudo`)."""
    spec = spec or firewall_spec(plan)
    nftables_package(name="Install nftables", spec=spec, **arguments)
    rules(name="Load the servekit firewall", plan=plan, spec=spec, **arguments)
