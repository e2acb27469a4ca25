"""Where monitoring lives on its host: the files of Debian's `prometheus` (2.42),
`prometheus-alertmanager` (0.25) and `prometheus-blackbox-exporter` (0.23) packages, servekit's
rules beside them, and the services; on every host, the node exporter's arguments and the drop-in
that points NVIDIA's DCGM exporter at servekit's address and counters.

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

BLACKBOX_PORT = 9115
"""The blackbox exporter's default port (`prometheus-blackbox-exporter --help`:
`--web.listen-address=:9115`, https://github.com/prometheus/blackbox_exporter#running-this-software)."""
OLLAMA_PROBE_MODULE = "ollama"
"""The blackbox exporter's module that probes an Ollama API: Ollama has no /metrics; `GET /`
answers 200 "Ollama is running" (server/routes.go in https://github.com/ollama/ollama; the
Homebrew formula's test checks it: https://github.com/Homebrew/homebrew-core/blob/master/Formula/o/ollama.rb)."""
DCGM_EXPORTER_UNIT = "nvidia-dcgm-exporter"
"""The unit NVIDIA's `datacenter-gpu-manager-exporter` package ships; it runs
`/usr/bin/dcgm-exporter -f /etc/dcgm-exporter/default-counters.csv` (no address: `:9400`),
https://github.com/NVIDIA/dcgm-exporter/blob/main/packaging/config-files/systemd/nvidia-dcgm-exporter.service"""
DCGM_EXPORTER_BINARY = "/usr/bin/dcgm-exporter"


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
    blackbox_config: str = "/etc/prometheus/blackbox.yml"
    blackbox_defaults: str = "/etc/default/prometheus-blackbox-exporter"
    blackbox_service: str = "prometheus-blackbox-exporter"
    dcgm_dropin: str = f"/etc/systemd/system/{DCGM_EXPORTER_UNIT}.service.d/servekit.conf"
    dcgm_counters: str = "/etc/dcgm-exporter/servekit-counters.csv"
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
            blackbox_config=f"{root}/blackbox.yml",
            blackbox_defaults=f"{root}/default-prometheus-blackbox-exporter",
            dcgm_dropin=f"{root}/nvidia-dcgm-exporter.service.d/servekit.conf",
            dcgm_counters=f"{root}/servekit-counters.csv",
        )


MONITORING = MonitoringLayout()
