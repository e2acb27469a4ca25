"""The gateway's access log and per-key metrics on its host, in named steps: Debian's `mtail` and
`rsyslog`, their directories (the access log 0750 root:mtail, the mtail program 0755 root:root),
servekit's four files (the rsyslog snippet, the logrotate rule, the mtail program, the unit),
rsyslog restarted after its snippet changed (once `rsyslogd -N1` accepts the whole
configuration), and `servekit-gateway-metrics.service` enabled, running, and restarted after its
program or unit changed. A second run with nothing new changes nothing and restarts nothing.

The files hold no key (paths and key names only), so they are uploaded like any rendered file.
"""

from __future__ import annotations

from pyinfra.api.operation import OperationMeta, operation
from pyinfra.context import host
from pyinfra.facts.files import Directory
from pyinfra.operations import systemd

from servekit.gateway.keymetrics import PACKAGES
from servekit.gateway.layout import GATEWAY, GatewayLayout
from servekit.operations.common import Commands
from servekit.operations.debian import install_missing
from servekit.operations.hoststate import announce
from servekit.operations.rendered import any_changed, put
from servekit.shell import quote as q
from servekit.templating import RenderedFile

RSYSLOG = "rsyslog.service"


def directories(layout: GatewayLayout) -> list[tuple[str, int, str, str]]:
    """(path, mode, user, group) of every directory the access log and metrics need."""
    return [
        (layout.access_log_dir, 0o750, "root", layout.metrics_user),
        (layout.metrics_programs, 0o755, "root", "root"),
    ]


@operation()
def metrics_packages() -> Commands:
    """
    Install Debian's `mtail` and `rsyslog` (apt lists refreshed first), those not installed.

    **Example:**

    .. code:: python

        metrics_packages(name="Install mtail and rsyslog")
    """
    yield from install_missing(PACKAGES)


@operation()
def metrics_directories() -> Commands:
    """
    Create the access log's and mtail's directories with their modes and owners, where they
    differ (the log 0750 root:mtail, the program 0755 root:root).

    **Example:**

    .. code:: python

        metrics_directories(name="Create the access log's directories")
    """
    changed = False
    for path, mode, user, group in directories(GATEWAY):
        info = host.get_fact(Directory, path=path)
        if info and (info.get("user"), info.get("group"), info.get("mode")) == (
            user,
            group,
            int(f"{mode:o}"),
        ):
            continue
        changed = True
        announce(f"create {path} ({mode:04o} {user}:{group})")
        yield f"install -d -m {mode:04o} -o {q(user)} -g {q(group)} {q(path)}"
    if not changed:
        host.noop("the access log's and mtail's directories exist")


def metrics_steps(files: list[RenderedFile]) -> None:
    """The steps, in order, for `servekit.gateway.keymetrics.metrics_files`' files (rsyslog's
    snippet, logrotate's rule, the mtail program, the unit)."""
    rsyslog_conf, logrotate, program, unit = files
    metrics_packages(name="Install mtail and rsyslog")
    metrics_directories(name="Create the access log's directories")
    written: list[OperationMeta] = [
        put(file, f"Write {file.path}", owner=True) for file in (rsyslog_conf, logrotate)
    ]
    restart_rsyslog(name="Restart rsyslog (its snippet changed)", _if=any_changed(written[0]))
    systemd.service(name="Enable and start rsyslog", service=RSYSLOG, running=True, enabled=True)
    mtail_files = [put(file, f"Write {file.path}", owner=True) for file in (program, unit)]
    systemd.daemon_reload(name="Reload systemd (the unit changed)", _if=any_changed(mtail_files[1]))
    service = f"{GATEWAY.metrics_service}.service"
    systemd.service(name=f"Enable and start {service}", service=service, running=True, enabled=True)
    systemd.service(
        name=f"Restart {service} (its program or unit changed)",
        service=service,
        restarted=True,
        _if=any_changed(*mtail_files),
    )


@operation(is_idempotent=False)
def restart_rsyslog() -> Commands:
    """
    Check the whole rsyslog configuration (`rsyslogd -N1`), then restart rsyslog; a refused
    configuration stops this host with rsyslog's message and leaves rsyslog running as it was.
    Call it with `_if=` the snippet's change.

    **Example:**

    .. code:: python

        restart_rsyslog(name="Restart rsyslog", _if=any_changed(snippet))
    """
    yield f"rsyslogd -N1 -f /etc/rsyslog.conf && systemctl restart {q(RSYSLOG)}"
