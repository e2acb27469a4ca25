"""Prometheus's and Alertmanager's files on the monitoring host, from its plan: the scrape
configuration (every target labelled with fleet, host and role; engines also model, replica and
unit), the command-line arguments Debian's units read (listen address, retention), and
Alertmanager's routes (a webhook from a secret, else a receiver that sends nothing)."""

from __future__ import annotations

from urllib.parse import urlsplit

from servekit.gateway.haproxy import server_address
from servekit.hostplan import HostPlan, MonitoringHost, ScrapeJob
from servekit.monitoring.layout import (
    ALERTMANAGER_PORT,
    BLACKBOX_PORT,
    MONITORING,
    OLLAMA_PROBE_MODULE,
    MonitoringLayout,
)
from servekit.monitoring.rules import rules_file
from servekit.monitoring.yamltext import Value, dump
from servekit.secrets import SecretError
from servekit.templating import RenderedFile

HEADER = "# Written by servekit (deploys/monitoring.py) from the fleet's plan: changes are lost.\n"


def target_address(address: str) -> str:
    """`host:port` as Prometheus takes it (IPv6 in brackets); ValueError without an address.
    The same form HAProxy takes: the gateway's check, with this file's wording."""
    try:
        return server_address(address)
    except ValueError as error:
        raise ValueError(str(error).replace("gateway upstream", "scrape target", 1)) from None


def _monitoring(plan: HostPlan) -> MonitoringHost:
    assert plan.monitoring is not None, f"host {plan.name} runs no monitoring"
    return plan.monitoring


def probe_config(job: ScrapeJob, layout: MonitoringLayout) -> Value:
    """A job probed through the blackbox exporter on loopback: each target's URL becomes the
    `target` parameter and the `instance` label, and the scrape goes to the exporter (the
    relabelling of https://github.com/prometheus/blackbox_exporter#prometheus-configuration and
    https://prometheus.io/docs/guides/multi-target-exporter/)."""
    static: list[Value] = [
        {"targets": [f"http://{target_address(t.address)}/"], "labels": dict(t.labels)}
        for t in job.targets
    ]
    return {
        "job_name": job.job,
        "metrics_path": job.metrics_path,
        "params": {"module": [str(job.probe_module)]},
        "static_configs": static,
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {
                "target_label": "__address__",
                "replacement": f"{layout.listen_address}:{BLACKBOX_PORT}",
            },
        ],
    }


def scrape_configs(plan: HostPlan, layout: MonitoringLayout) -> list[Value]:
    monitoring = _monitoring(plan)
    own = {"fleet": plan.fleet, "host": plan.name, "role": "monitoring"}
    local = layout.listen_address
    configs: list[Value] = [
        {"job_name": job, "static_configs": [{"targets": [address], "labels": dict(own)}]}
        for job, address in (
            ("prometheus", f"{local}:{monitoring.port}"),
            ("alertmanager", f"{local}:{ALERTMANAGER_PORT}"),
            ("blackbox", f"{local}:{BLACKBOX_PORT}"),
        )
    ]
    for job in monitoring.jobs:
        if job.probe_module is not None:
            configs.append(probe_config(job, layout))
            continue
        static: list[Value] = [
            {"targets": [target_address(t.address)], "labels": dict(t.labels)} for t in job.targets
        ]
        configs.append(
            {"job_name": job.job, "metrics_path": job.metrics_path, "static_configs": static}
        )
    return configs


def prometheus_config(plan: HostPlan, layout: MonitoringLayout = MONITORING) -> str:
    monitoring = _monitoring(plan)
    config: Value = {
        "global": {
            "scrape_interval": monitoring.scrape_interval,
            "evaluation_interval": monitoring.scrape_interval,
            "external_labels": {"fleet": plan.fleet},
        },
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"{layout.listen_address}:{ALERTMANAGER_PORT}"]}]}
            ]
        },
        "rule_files": [f"{layout.rules_directory}/*.rules.yml"],
        "scrape_configs": scrape_configs(plan, layout),
    }
    return dump(config, HEADER)


def prometheus_defaults(plan: HostPlan, layout: MonitoringLayout = MONITORING) -> str:
    """/etc/default/prometheus: Debian's unit runs `prometheus $ARGS`. Loopback only; the
    retention is a checked Prometheus duration (no spaces or quotes)."""
    monitoring = _monitoring(plan)
    args = [
        f"--web.listen-address={layout.listen_address}:{monitoring.port}",
        f"--storage.tsdb.retention.time={monitoring.retention}",
    ]
    return f'{HEADER}ARGS="{" ".join(args)}"\n'


def alertmanager_defaults(layout: MonitoringLayout = MONITORING) -> str:
    """/etc/default/prometheus-alertmanager: loopback only, no HA cluster port."""
    args = [f"--web.listen-address={layout.listen_address}:{ALERTMANAGER_PORT}"]
    return f'{HEADER}ARGS="{" ".join([*args, "--cluster.listen-address="])}"\n'


PROBE_TIMEOUT = "5s"
"""How long a probe of an Ollama API may take (below the scrape timeout of the shortest
interval servekit accepts); OllamaSlow fires well before it."""


def blackbox_config() -> str:
    """/etc/prometheus/blackbox.yml: the Ollama module, an HTTP GET that must answer 200
    (modules: https://github.com/prometheus/blackbox_exporter/blob/master/CONFIGURATION.md)."""
    module: Value = {
        "prober": "http",
        "timeout": PROBE_TIMEOUT,
        "http": {"method": "GET", "valid_status_codes": [200], "no_follow_redirects": True},
    }
    return dump({"modules": {OLLAMA_PROBE_MODULE: module}}, HEADER)


def blackbox_defaults(layout: MonitoringLayout = MONITORING) -> str:
    """/etc/default/prometheus-blackbox-exporter: servekit's modules, loopback only (Prometheus
    beside it asks it to probe)."""
    args = [
        f"--config.file={layout.blackbox_config}",
        f"--web.listen-address={layout.listen_address}:{BLACKBOX_PORT}",
    ]
    return f'{HEADER}ARGS="{" ".join(args)}"\n'


def webhook_url(value: str) -> str:
    """The webhook URL from its secret: http(s), a host, no spaces; errors never show it."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SecretError(
            "alert_webhook: not an http(s) URL with a host", "put the receiver's URL in the secret"
        )
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise SecretError("alert_webhook: the URL has spaces or control characters", "remove them")
    return value


def alertmanager_config(webhook: str | None) -> str:
    """Alerts go to the webhook when the fleet names one, else to `null` (sent nowhere).
    A replica that is not ready silences its own EngineDown; a node down, its host's others."""
    receivers: list[Value] = [{"name": "null"}]
    if webhook is not None:
        hook: Value = {"url": webhook_url(webhook), "send_resolved": True}
        receivers.append({"name": "webhook", "webhook_configs": [hook]})
    config: Value = {
        "route": {
            "receiver": "webhook" if webhook is not None else "null",
            "group_by": ["alertname", "fleet", "host"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": receivers,
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="ReplicaNotReady"'],
                "target_matchers": ['alertname="EngineDown"'],
                "equal": ["instance"],
            },
            {
                "source_matchers": ['alertname="NodeDown"'],
                "target_matchers": ['alertname!="NodeDown"'],
                "equal": ["host"],
            },
        ],
    }
    return dump(config, HEADER)


def monitoring_files(
    plan: HostPlan, webhook: str | None, layout: MonitoringLayout = MONITORING
) -> list[RenderedFile]:
    """Every file of the monitoring host: configs 0640 root:prometheus (Alertmanager's holds the
    webhook URL), Debian's defaults files 0644 root:root."""

    def config(path: str, content: str) -> RenderedFile:
        return RenderedFile(path, content, "0640", "root", layout.group)

    def defaults(path: str, content: str) -> RenderedFile:
        return RenderedFile(path, content, "0644", "root", "root")

    return [
        config(layout.prometheus_config, prometheus_config(plan, layout)),
        config(layout.rules_file, rules_file(plan)),
        config(layout.alertmanager_config, alertmanager_config(webhook)),
        defaults(layout.blackbox_config, blackbox_config()),
        defaults(layout.prometheus_defaults, prometheus_defaults(plan, layout)),
        defaults(layout.alertmanager_defaults, alertmanager_defaults(layout)),
        defaults(layout.blackbox_defaults, blackbox_defaults(layout)),
    ]
