"""Taking replicas out of the gateway's rotation while a rollout restarts them, through HAProxy's
runtime API (the admin socket, spoken to with Debian's `socat`):

- `set server <pool>/<server> state drain`: no new requests go to it, those in flight finish
  (https://docs.haproxy.org/2.6/management.html#9.3-set%20server);
- `show stat`: the server's current sessions (`scur`, 5th CSV field) and check status
  (`status`, 18th), https://docs.haproxy.org/2.6/management.html#9.1;
- `set server <pool>/<server> state ready`: back in rotation (after `slowstart`).

The scripts are plain sh for the gateway host (which needs no Python). A gateway that is not
running yet (no socket) or a server the running configuration does not have is skipped, so a
first deploy, before the gateway's, works as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from servekit.gateway.haproxy import pools, server_address
from servekit.hostplan import GatewayHost
from servekit.shell import poll_until_zero
from servekit.shell import quote as q

SOCAT = "socat"
"""Debian's package and command for the admin socket (https://packages.debian.org/bookworm/socat)."""
READY_TIMEOUT_S = 60
"""How long a re-enabled server gets to pass the gateway's own health checks (`rise 2` at
`inter 2s`: about 4 s once the engine answers)."""


@dataclass(frozen=True)
class Target:
    """One replica endpoint in the gateway's configuration: `backend/server`."""

    backend: str
    server: str
    upstream: str

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.server}"


def targets(gateway: GatewayHost, replicas: Iterable[tuple[str, int]]) -> list[Target]:
    """The backend/server names of the given (serve, replica index) pairs, as the gateway's
    configuration (`servekit.gateway.haproxy.pools`) names them."""
    wanted = set(replicas)
    try:
        upstreams = {
            server_address(m.upstream): m.upstream
            for m in gateway.members
            if (m.serve, m.replica) in wanted
        }
        backends = pools(gateway.routes)
    except ValueError:  # an upstream without an address: no gateway config can exist yet
        return []
    found = []
    for pool in backends:
        for server in pool.servers:
            if server.address in upstreams:
                found.append(Target(pool.name, server.name, upstreams[server.address]))
    return found


def _prelude(socket: str) -> str:
    """sh: `cli CMD` talks to the admin socket; exit 0 (skipping) without a running gateway."""
    return (
        f"sock={q(socket)}; "
        'if [ ! -S "$sock" ]; then echo "servekit: no gateway running here yet: nothing to '
        'drain"; exit 0; fi; '
        f"if ! command -v {SOCAT} >/dev/null; then echo 'servekit: {SOCAT} is missing (run "
        "deploys/gateway.py): replicas are not drained'; exit 0; fi; "
        f'cli() {{ printf "%s\\n" "$1" | {SOCAT} -t 5 stdio "unix-connect:$sock"; }}; '
    )


def _column(names: list[str], reduce: str) -> str:
    """sh: an awk over `show stat` summing `reduce` over the named servers' rows into `r`."""
    wanted = " ".join(names)
    return (
        f"cli 'show stat' | awk -F, -v want={q(wanted)} "
        '\'BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) k[w[i]] = 1 } '
        f'($1 "/" $2) in k {{ {reduce} }} END {{ print r + 0 }}\''
    )


def drain_script(targets: list[Target], socket: str, timeout: int) -> str:
    """sh: drain the targets, then wait (at most `timeout` s) until their requests finished."""
    names = [t.name for t in targets]
    sets = "; ".join(f"cli {q(f'set server {n} state drain')} >/dev/null" for n in names)
    late = f"$n requests still in flight after {int(timeout)} s (gateway.drain_timeout): "
    return (
        _prelude(socket)
        + f"{sets}; "
        + f"echo {q('servekit: draining ' + ', '.join(names) + ' at the gateway')}; "
        + poll_until_zero(_column(names, "r += $5"), timeout, late + "restarting anyway")
        + "echo 'servekit: drained'"
    )


def enable_script(targets: list[Target], socket: str, timeout: int = READY_TIMEOUT_S) -> str:
    """sh: put the targets back in rotation, then wait until the gateway's checks see them up
    (a server still down after `timeout` s is reported, not waited for)."""
    names = [t.name for t in targets]
    sets = "; ".join(f"cli {q(f'set server {n} state ready')} >/dev/null" for n in names)
    late = f"$n of them not up at the gateway after {int(timeout)} s"
    return (
        _prelude(socket)
        + f"{sets}; "
        + poll_until_zero(_column(names, "if ($18 !~ /^UP/) r += 1"), timeout, late)
        + f"echo {q('servekit: ' + ', '.join(names) + ' back in rotation at the gateway')}"
    )
