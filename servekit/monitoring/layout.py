"""Where monitoring lives on its host: the files of Debian's `prometheus` (2.42) and
`prometheus-alertmanager` (0.25) packages, servekit's rules beside them, and the services.

Paths are those the Debian packages ship and their units read (`dpkg -L prometheus
prometheus-alertmanager` on bookworm; the units run `/usr/bin/prometheus $ARGS` with
`EnvironmentFile=/etc/default/prometheus`, Alertmanager likewise with
`/etc/default/prometheus-alertmanager`; `prometheus --help` shows `--config.file` defaulting to
/etc/prometheus/prometheus.yml, `prometheus-alertmanager --help` /etc/prometheus/alertmanager.yml).
See https://packages.debian.org/bookworm/prometheus and
https://salsa.debian.org/go-team/packages/prometheus/-/tree/debian/sid/debian. Tests point the
paths at a temporary directory (`MonitoringLayout.under`).
"""

from __future__ import annotations

from dataclasses import dataclass

ALERTMANAGER_PORT = 9093
"""Alertmanager's default web port (`prometheus-alertmanager --help`: `--web.listen-address=:9093`,
https://github.com/prometheus/alertmanager#high-availability)."""


@dataclass(frozen=True)
class MonitoringLayout:
    prometheus_config: str = "/etc/prometheus/prometheus.yml"
    rules_directory: str = "/etc/prometheus/servekit"
    prometheus_defaults: str = "/etc/default/prometheus"
    alertmanager_config: str = "/etc/prometheus/alertmanager.yml"
    alertmanager_defaults: str = "/etc/default/prometheus-alertmanager"
    node_exporter_defaults: str = "/etc/default/prometheus-node-exporter"
    prometheus_service: str = "prometheus"
    alertmanager_service: str = "prometheus-alertmanager"
    node_exporter_service: str = "prometheus-node-exporter"
    user: str = "prometheus"
    group: str = "prometheus"
    listen_address: str = "127.0.0.1"
    """Prometheus and Alertmanager answer loopback only: open them through an SSH tunnel."""

    @property
    def rules_file(self) -> str:
        """servekit's alert rules (Prometheus loads every `*.rules.yml` of the directory)."""
        return f"{self.rules_directory}/servekit.rules.yml"

    @classmethod
    def under(cls, root: str) -> MonitoringLayout:
        """Every path under `root`: a non-root test run."""
        return cls(
            prometheus_config=f"{root}/prometheus.yml",
            rules_directory=f"{root}/servekit",
            prometheus_defaults=f"{root}/default-prometheus",
            alertmanager_config=f"{root}/alertmanager.yml",
            alertmanager_defaults=f"{root}/default-prometheus-alertmanager",
            node_exporter_defaults=f"{root}/default-prometheus-node-exporter",
        )


MONITORING = MonitoringLayout()
