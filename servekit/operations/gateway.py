"""The gateway on its host, in named steps: Debian's `haproxy` package, servekit's directory
(0750 root:haproxy), the configuration and key maps (0640 root:haproxy), Debian's own
`haproxy.service` enabled and running, and a reload only after a file changed.

A configuration HAProxy refuses never replaces a working one: the new files are staged beside
the old ones, moved into place, checked with `haproxy -c`, and the previous files are put back
when the check fails (the host stops with where HAProxy found the error, never the line itself:
the configuration holds the engines' key). The reload is Debian's (`systemctl reload haproxy`:
a new worker takes new connections, the old one finishes its streams), so it drops nothing.

The files hold secrets (the engine key, the clients' key hashes): their content travels on
standard input and is never shown, not even as a diff in `--dry` (which names the files only).
"""

from __future__ import annotations

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import Directory
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from servekit.gateway.checks import new_pools_answer_script
from servekit.gateway.haproxy import Pool
from servekit.gateway.layout import GATEWAY
from servekit.operations.common import Commands
from servekit.operations.debian import install_missing
from servekit.operations.hoststate import announce
from servekit.operations.staged import (
    file_differs,
    stage_command,
    swap_and_check,
)
from servekit.shell import quote as q
from servekit.templating import RenderedFile

PACKAGES = ("haproxy", "socat")
"""Debian's HAProxy, and socat for its admin socket (rollouts drain replicas through it)."""


@operation()
def haproxy_package() -> Commands:
    """
    Install Debian's `haproxy` and `socat` (apt lists refreshed first), unless installed.

    **Example:**

    .. code:: python

        haproxy_package(name="Install HAProxy")
    """
    yield from install_missing(PACKAGES)


@operation()
def gateway_directory() -> Commands:
    """
    Create servekit's gateway directory (key maps): 0750, root:haproxy.

    **Example:**

    .. code:: python

        gateway_directory(name="Create /etc/haproxy/servekit")
    """
    path = GATEWAY.directory
    info = host.get_fact(Directory, path=path)
    if info and (info.get("user"), info.get("group"), info.get("mode")) == (
        "root",
        GATEWAY.group,
        750,
    ):
        host.noop(f"{path} exists (0750 root:{GATEWAY.group})")
        return
    announce(f"create {path} (0750 root:{GATEWAY.group})")
    yield f"install -d -m 0750 -o root -g {q(GATEWAY.group)} {q(path)}"


def swap_and_check_command(paths: list[str], config: str) -> str:
    """Shell: the staged files in, checked with `haproxy -c`; refused, the previous ones back
    and a failure naming where HAProxy found the error (file and line, never the line: the
    configuration holds the engines' key)."""
    where = (
        f"haproxy -c -f {q(config)} 2>&1 | grep -o 'parsing \\[[^]]*\\]' | sort -u | tr '\\n' ' '"
    )
    explain = (
        f"where=$({where}); "
        "printf '%s\\n' \"servekit: HAProxy refused the new gateway configuration "
        "(${where:-see haproxy -c}); the previous files are back in place and the running "
        'gateway keeps its configuration" >&2'
    )
    return swap_and_check(paths, f"haproxy -c -q -f {q(config)} >/dev/null 2>&1", explain)


@operation()
def gateway_config(files: list[RenderedFile], pools: list[Pool] | None = None) -> Commands:
    """
    Write the gateway's files where they differ (staged, then moved in), and check the result
    with `haproxy -c` before anything reloads: a refused configuration is rolled back and stops
    this host. Before any file changes, each pool the running configuration does not route to
    yet must have a replica answering its health check from here
    (`servekit.gateway.checks`). Contents travel on standard input and are never shown.

    + files: the rendered gateway files (`servekit.gateway.haproxy.gateway_files`)
    + pools: the configuration's pools (`servekit.gateway.haproxy.pools`), to check new ones

    **Example:**

    .. code:: python

        config = gateway_config(name="Write the gateway configuration", files=files,
                                pools=pools(plan.gateway.routes))
    """
    changed = [f for f in files if file_differs(f)]
    if not changed:
        host.noop(f"the gateway's {len(files)} files are written")
        return
    announce(*(f"write {f.path} ({f.mode} {f.user}:{f.group}; content not shown)" for f in changed))
    if pools:
        yield StringCommand(
            "bash", "-c", QuoteString(new_pools_answer_script(pools, GATEWAY.config))
        )
    for rendered in changed:
        yield StringCommand(stage_command(rendered), _stdin=rendered.content)
    yield swap_and_check_command([f.path for f in changed], GATEWAY.config)


@operation()
def gateway_service() -> Commands:
    """
    Enable and start Debian's `haproxy.service` (nothing when it is enabled and running).

    **Example:**

    .. code:: python

        gateway_service(name="Enable and start haproxy.service")
    """
    unit = f"{GATEWAY.service}.service"
    running = (host.get_fact(SystemdStatus) or {}).get(unit)
    enabled = _enabled(unit)
    if running and enabled:
        host.noop(f"{unit} is enabled and running")
        return
    if not enabled:
        announce(f"enable {unit}")
        yield f"systemctl enable {q(unit)}"
    if not running:
        announce(f"start {unit}")
        yield f"systemctl start {q(unit)}"


def _enabled(unit: str) -> bool:
    return bool((host.get_fact(SystemdEnabled) or {}).get(unit))


@operation(is_idempotent=False)
def gateway_reload() -> Commands:
    """
    Reload `haproxy.service` (hitless: in-flight requests and streams finish on the old
    worker). Call it with `_if=` the configuration step's change.

    **Example:**

    .. code:: python

        gateway_reload(name="Reload HAProxy", _if=any_changed(config))
    """
    yield f"systemctl reload {q(GATEWAY.service + '.service')}"
