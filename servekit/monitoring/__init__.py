"""The monitoring host's plan rendered: Prometheus's scrape configuration, servekit's alert
rules, Alertmanager's routes, and the arguments Debian's units read. Pure: no pyinfra, no host;
the deploy writes what `monitoring_files` returns."""

from servekit.monitoring.layout import MONITORING, MonitoringLayout
from servekit.monitoring.prometheus import monitoring_files
from servekit.monitoring.rules import alerts

__all__ = ["MONITORING", "MonitoringLayout", "alerts", "monitoring_files"]
