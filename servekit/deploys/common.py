"""What the deploys share: reading this host's typed plan."""

from __future__ import annotations

from pyinfra.context import host

from servekit.hostplan import HOST_DATA_KEY, HostPlan


def host_plan() -> HostPlan | None:
    """This host's servekit plan (host data `servekit`, typed), or None when the inventory was
    not made by servekit. The one way a deploy reads its plan."""
    raw = host.data.get(HOST_DATA_KEY)
    return None if raw is None else HostPlan.from_host_data(raw)
