"""Monitoring: Prometheus and Alertmanager from Debian on `Monitoring.host`, scraping every
engine, the gateway's exporter, node exporters and (with `GpuSetup(dcgm=True)`) DCGM exporters,
with servekit's alert rules.

`monitoring_host()` is the pyinfra deploy `deploys/monitoring.py` runs on every host of a fleet.
On the host whose plan (`servekit.deploys.common.host_plan`) has monitoring it:

1. reads the alert webhook URL on the control machine when the fleet names one (a read error
   stops this host with the reason, never the URL);
2. renders prometheus.yml, the rules, alertmanager.yml and Debian's ARGS files
   (`servekit.monitoring.monitoring_files`);
3. installs Debian's `prometheus`, `prometheus-alertmanager` and `prometheus-node-exporter`,
   writes the configurations (staged and checked with promtool and amtool before they count: a
   refused one is rolled back) and the ARGS files, enables and starts the services, restarts
   them after an ARGS file changed, else reloads them after a configuration changed.

Prometheus (the fleet's port), Alertmanager (9093) and the node exporter (9100) listen on
loopback only: open Prometheus through an SSH tunnel. Every other host is left alone: node and
DCGM exporters there are not deployed by servekit yet. Operations:
`servekit.operations.monitoring`.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host

from servekit import secrets
from servekit.deploys.common import host_plan
from servekit.hostplan import MonitoringHost
from servekit.monitoring import MONITORING, monitoring_files
from servekit.operations.common import problem
from servekit.operations.monitoring import (
    monitoring_config,
    monitoring_packages,
    monitoring_reload,
    monitoring_restart,
    monitoring_services,
    rules_directory,
)
from servekit.secrets import SecretError

ARGS_FILES = (
    MONITORING.prometheus_defaults,
    MONITORING.alertmanager_defaults,
    MONITORING.node_exporter_defaults,
)


@deploy("servekit monitoring")
def monitoring_host() -> None:
    """Converge monitoring on this host from its servekit plan (nothing without monitoring)."""
    plan = host_plan()
    if plan is None:
        logger.warning(f"{host.name}: no servekit plan in host data; skipping monitoring")
        return
    if plan.monitoring is None:
        return
    read, webhook = read_webhook(plan.monitoring)
    if not read:
        return
    try:
        files = monitoring_files(plan, webhook)
    except (SecretError, ValueError) as error:
        problem(name="Render the monitoring configuration", message=str(error))
        return
    configs = [f for f in files if f.path not in ARGS_FILES]
    arguments = [f for f in files if f.path in ARGS_FILES]
    monitoring_packages(name="Install Prometheus, Alertmanager and the node exporter")
    rules_directory(name="Create the rules directory")
    config = monitoring_config(name="Write the monitoring configuration", files=configs)
    flags = monitoring_config(name="Write the services' arguments", files=arguments)
    monitoring_services(name="Enable and start Prometheus, Alertmanager, node exporter")
    monitoring_restart(name="Restart after new arguments", _if=flags.did_change)
    monitoring_reload(
        name="Reload Prometheus and Alertmanager",
        _if=lambda: config.did_change() and not flags.did_change(),
    )


def read_webhook(monitoring: MonitoringHost) -> tuple[bool, str | None]:
    """(True, the webhook URL read on the control machine, or None without one); (False, None)
    after stopping this host with why (never the URL)."""
    if monitoring.alert_webhook is None:
        return True, None
    try:
        return True, secrets.read_secret(monitoring.alert_webhook)
    except SecretError as error:
        problem(name="Read the alert webhook", message=str(error))
        return False, None
