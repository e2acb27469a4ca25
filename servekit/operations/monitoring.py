"""Monitoring on its host, in named steps: Debian's `prometheus`, `prometheus-alertmanager` and
`prometheus-blackbox-exporter` packages, servekit's rules directory (0750 root:prometheus), the
configurations and Debian's ARGS files, the three services enabled and running, and a reload
only after a file changed. (The node exporter, on every host, is `servekit.operations.exporters`.)

A configuration Prometheus or Alertmanager refuses never replaces a working one: the new files
are staged beside the old ones, moved into place, checked with `promtool check config` (which
checks the rule files too), `amtool check-config` and the blackbox exporter's
`--config.check`, and the previous files are put back when
a check fails. Alertmanager's file holds the webhook URL: contents travel on standard input and
are never shown.
"""

from __future__ import annotations

from pyinfra.api.command import StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import Directory

from servekit.monitoring.layout import MONITORING, MonitoringLayout
from servekit.operations.common import Commands
from servekit.operations.debian import install_missing
from servekit.operations.exporters import changed_files
from servekit.operations.hoststate import announce
from servekit.operations.services import enable_and_start
from servekit.operations.staged import stage_command, swap_and_check
from servekit.shell import quote as q
from servekit.templating import RenderedFile

PACKAGES = ("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter")
"""Debian bookworm: prometheus 2.42, prometheus-alertmanager 0.25, prometheus-blackbox-exporter
0.23 (https://packages.debian.org/bookworm/prometheus and the same page for the others)."""
SERVICES = (
    MONITORING.prometheus_service,
    MONITORING.alertmanager_service,
    MONITORING.blackbox_service,
)


@operation()
def monitoring_packages() -> Commands:
    """
    Install Debian's Prometheus, Alertmanager and blackbox exporter (apt lists refreshed
    first), unless they are installed.

    **Example:**

    .. code:: python

        monitoring_packages(name="Install Prometheus")
    """
    yield from install_missing(PACKAGES)


@operation()
def rules_directory() -> Commands:
    """
    Create servekit's rules directory: 0750, root:prometheus.

    **Example:**

    .. code:: python

        rules_directory(name="Create /etc/prometheus/servekit")
    """
    path, group = MONITORING.rules_directory, MONITORING.group
    info = host.get_fact(Directory, path=path)
    if info and (info.get("user"), info.get("group"), info.get("mode")) == ("root", group, 750):
        host.noop(f"{path} exists (0750 root:{group})")
        return
    announce(f"create {path} (0750 root:{group})")
    yield f"install -d -m 0750 -o root -g {q(group)} {q(path)}"


def check_command(layout: MonitoringLayout = MONITORING) -> str:
    """Shell: Prometheus's, Alertmanager's and the blackbox exporter's own checks of the files
    in place (promtool also checks the rule files prometheus.yml names)."""
    return (
        f"promtool check config {q(layout.prometheus_config)} >/dev/null 2>&1 && "
        f"amtool check-config {q(layout.alertmanager_config)} >/dev/null 2>&1 && "
        "prometheus-blackbox-exporter --config.check "
        f"--config.file={q(layout.blackbox_config)} >/dev/null 2>&1"
    )


def swap_and_check_command(paths: list[str], check: str) -> str:
    """Shell: the staged files in, checked by `check`; refused, the previous ones back and a
    failure saying so."""
    explain = (
        "printf '%s\\n' 'servekit: promtool, amtool or the blackbox exporter refused the new "
        "monitoring "
        "configuration; the previous files are back in place (run promtool check config "
        f"{MONITORING.prometheus_config} on the host to see why)' >&2"
    )
    return swap_and_check(paths, check, explain)


@operation()
def monitoring_config(files: list[RenderedFile]) -> Commands:
    """
    Write the monitoring files where they differ (staged, then moved in), and check the result
    with promtool and amtool before anything reloads: a refused configuration is rolled back
    and stops this host. Contents travel on standard input and are never shown.

    + files: the rendered files (`servekit.monitoring.monitoring_files`)

    **Example:**

    .. code:: python

        config = monitoring_config(name="Write the monitoring configuration", files=files)
    """
    changed = changed_files(files, "the monitoring's")
    if not changed:
        return
    for rendered in changed:
        yield StringCommand(stage_command(rendered), _stdin=rendered.content)
    yield swap_and_check_command([f.path for f in changed], check_command())


@operation()
def monitoring_services() -> Commands:
    """
    Enable and start Debian's prometheus, prometheus-alertmanager and
    prometheus-blackbox-exporter services (nothing for those enabled and running).

    **Example:**

    .. code:: python

        monitoring_services(name="Enable and start Prometheus")
    """
    yield from enable_and_start([f"{service}.service" for service in SERVICES])


@operation(is_idempotent=False)
def monitoring_reload() -> Commands:
    """
    Reload Prometheus, Alertmanager and the blackbox exporter (Debian's units send SIGHUP: the
    scrape configuration, rules, routes and modules are reread, nothing is dropped). Call it
    with `_if=` the configuration step's change.

    **Example:**

    .. code:: python

        monitoring_reload(name="Reload Prometheus", _if=any_changed(config))
    """
    for service in SERVICES:
        yield f"systemctl reload {q(service + '.service')}"


@operation(is_idempotent=False)
def monitoring_restart() -> Commands:
    """
    Restart the three services after their ARGS files changed: listen addresses, retention and
    the blackbox exporter's configuration file are command-line flags, which a reload does not
    reread. Call it with `_if=` the
    ARGS step's change.

    **Example:**

    .. code:: python

        monitoring_restart(name="Restart Prometheus", _if=any_changed(arguments))
    """
    for service in SERVICES:
        yield f"systemctl restart {q(service + '.service')}"
