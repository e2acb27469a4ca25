"""systemd services a step needs running: enabled (started at boot) and started now, each only
where it is not, said per unit in `--dry`."""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.context import host
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from servekit.operations.common import Commands
from servekit.operations.hoststate import announce
from servekit.shell import quote as q


def enable_and_start(units: Sequence[str]) -> Commands:
    """Commands enabling and starting those of `units` (`name.service`) that are not (pyinfra's
    systemd facts); a no-op, said so, when all are enabled and running."""
    status = host.get_fact(SystemdStatus) or {}
    enabled = host.get_fact(SystemdEnabled) or {}
    if all(status.get(u) and enabled.get(u) for u in units):
        host.noop(f"{', '.join(units)} enabled and running")
        return
    for unit in units:
        if not enabled.get(unit):
            announce(f"enable {unit}")
            yield f"systemctl enable {q(unit)}"
        if not status.get(unit):
            announce(f"start {unit}")
            yield f"systemctl start {q(unit)}"
