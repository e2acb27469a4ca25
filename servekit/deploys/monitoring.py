"""Monitoring: Prometheus, Alertmanager and the blackbox exporter from Debian on
`Monitoring.host`, scraping every engine, the gateway's exporter, node exporters and (with
`GpuSetup(dcgm=True)`) DCGM exporters, probing Ollama APIs, with servekit's alert rules.

`monitoring_host()` is the pyinfra deploy `deploys/monitoring.py` runs on every host of a fleet.
On every Linux host of a fleet with monitoring (`HostPlan.exporters`) it first loads the host's
firewall (which admits only the monitoring host to the exporter ports), then installs Debian's
node exporter listening where the monitoring host reaches it (loopback there), with the systemd
collector, and on DCGM hosts points NVIDIA's exporter at that address and servekit's counters
(a drop-in); a host without systemd is skipped, saying so. Then, on the host whose plan
(`servekit.deploys.common.host_plan`) has monitoring it:

1. reads the alert webhook URL on the control machine, before anything else, when the fleet
   names one (a read error stops this host with the reason, never the URL);
2. renders prometheus.yml, the rules, alertmanager.yml and Debian's ARGS files
   (`servekit.monitoring.monitoring_files`);
3. installs Debian's `prometheus`, `prometheus-alertmanager` and
   `prometheus-blackbox-exporter`, writes the configurations (staged and checked with promtool,
   amtool and the blackbox exporter before they count: a refused one is rolled back) and the
   ARGS files, enables and starts the services, restarts them after an ARGS file changed, else
   reloads them after a configuration changed;
4. when the fleet names a Grafana source (`Monitoring.grafana`), installs Grafana from it with
   the Prometheus data source and servekit's dashboard provisioned (`servekit.operations.grafana`),
   last, so a Grafana mirror that fails never blocks Prometheus and the alerts.

Prometheus (the fleet's port), Alertmanager (9093), the blackbox exporter (9115) and the
monitoring host's own node exporter (9100) listen on loopback only: open Prometheus through an
SSH tunnel. Operations: `servekit.operations.monitoring`, `servekit.operations.exporters`.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host
from pyinfra.facts.files import Directory

from servekit import secrets
from servekit.deploys.common import host_plan
from servekit.firewall import needs_firewall
from servekit.hostplan import HostPlan, MonitoringHost
from servekit.monitoring import MONITORING, monitoring_files
from servekit.monitoring.exporters import exporter_files
from servekit.operations.common import problem
from servekit.operations.exporters import (
    exporter_config,
    exporters_restart,
    node_exporter_package,
    node_exporter_service,
)
from servekit.operations.firewall import firewall_ops
from servekit.operations.grafana import grafana_server
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
    MONITORING.blackbox_defaults,
)
SYSTEMD_RUNNING = "/run/systemd/system"
"""Present when systemd is the running init (sd_booted(3))."""


@deploy("servekit monitoring")
def monitoring_host() -> None:
    """Converge the exporters and, on its host, monitoring from this host's servekit plan
    (nothing without monitoring)."""
    plan = host_plan()
    if plan is None:
        logger.warning(f"{host.name}: no servekit plan in host data; skipping monitoring")
        return
    webhook = None
    if plan.monitoring is not None:
        read, webhook = read_webhook(plan.monitoring)
        if not read:
            return
    if exporters(plan) and plan.monitoring is not None:
        prometheus(plan, webhook)


def exporters(plan: HostPlan) -> bool:
    """The node exporter (and DCGM's drop-in) behind the host's firewall; False where the host
    cannot run them (no systemd: said so)."""
    if plan.exporters is None:
        if plan.monitoring is not None:  # a macOS monitoring host: Debian's packages only
            problem(name="Monitoring host", message="monitoring runs on Debian/Ubuntu hosts only")
            return False
        return True
    if not host.get_fact(Directory, path=SYSTEMD_RUNNING):
        logger.warning(
            f"{host.name}: no systemd running; skipping the node exporter (start "
            f"prometheus-node-exporter yourself, listening on {plan.exporters.listen_address}:"
            f"{plan.exporters.node_port}, or NodeDown fires for this host)"
        )
        return plan.monitoring is None
    sudo = plan.sudo
    if needs_firewall(plan):
        firewall_ops(plan, _sudo=sudo)
    node_exporter_package(name="Install the node exporter", _sudo=sudo)
    written = exporter_config(
        name="Write the exporters' files", files=exporter_files(plan), _sudo=sudo
    )
    node_exporter_service(name="Enable and start the node exporter", _sudo=sudo)
    exporters_restart(
        name="Restart the exporters after new files",
        dcgm=plan.exporters.dcgm_port is not None,
        _if=written.did_change,
        _sudo=sudo,
    )
    return True


def prometheus(plan: HostPlan, webhook: str | None) -> None:
    """Prometheus, Alertmanager and the blackbox exporter on the monitoring host (`webhook`:
    the alert webhook's URL, read on the control machine)."""
    try:
        files = monitoring_files(plan, webhook)
    except (SecretError, ValueError) as error:
        problem(name="Render the monitoring configuration", message=str(error))
        return
    configs = [f for f in files if f.path not in ARGS_FILES]
    arguments = [f for f in files if f.path in ARGS_FILES]
    monitoring_packages(name="Install Prometheus, Alertmanager and the blackbox exporter")
    rules_directory(name="Create the rules directory")
    config = monitoring_config(name="Write the monitoring configuration", files=configs)
    flags = monitoring_config(name="Write the services' arguments", files=arguments)
    monitoring_services(name="Enable and start Prometheus, Alertmanager, blackbox exporter")
    monitoring_restart(name="Restart after new arguments", _if=flags.did_change)
    monitoring_reload(
        name="Reload Prometheus and Alertmanager",
        _if=lambda: config.did_change() and not flags.did_change(),
    )
    grafana_server(plan)  # last: a Grafana mirror that fails never blocks Prometheus and alerts


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
