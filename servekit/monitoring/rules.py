"""servekit's alert rules: each alert's PromQL, how long it must hold, and a summary that tells
the operator what to run. Metric names come from `servekit.monitoring.metrics` (checked lists
with their sources); thresholds the fleet sets come from the monitoring host's plan.

Tested by `promtool check rules` and `promtool test rules` (firing and not firing series for
every alert) in tests/unit/test_monitoring_rules.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from servekit.hostplan import HostPlan, MonitoringHost
from servekit.monitoring.metrics import FABRIC_MANAGER_SUCCESS
from servekit.monitoring.yamltext import Value, dump

GPU_TEMPERATURE_C = 85
"""servekit's warning line, below the slowdown temperature of data-center GPUs (A100/H100 slow
down from about 90 °C; `nvidia-smi -q -d TEMPERATURE` shows a host's own slowdown value)."""
THROTTLED_FRACTION = 0.1
"""Share of time thermally throttled (`DCGM_FI_DEV_THERMAL_VIOLATION` counts microseconds)."""
KV_CACHE_FULL = 0.9
GATEWAY_5XX_FRACTION = 0.05
DISK_FULL_FRACTION = 0.9
OLLAMA_SLOW_SECONDS = 1
"""`GET /` of Ollama answers without touching a model: a second for it means the server or its
host is overloaded (the probe itself gives up after 5 s, servekit.monitoring.prometheus)."""
REAL_FILESYSTEMS = 'fstype!~"tmpfs|ramfs|overlay|squashfs|nsfs|fuse.*"'
SSH = "ssh {{ $labels.host }}"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    hold: str
    severity: str
    summary: str

    def rule(self) -> Value:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.hold,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary},
        }


def engine_alerts(monitoring: MonitoringHost) -> list[Alert]:
    unit = "{{ $labels.unit }}"
    replica = "{{ $labels.model }} replica {{ $labels.replica }} on {{ $labels.host }}"
    return [
        Alert(
            "EngineDown",
            'up{job="vllm"} == 0',
            "1m",
            "warning",
            f"vLLM {replica} does not answer /metrics (crashed, restarting or loading): "
            f"`{SSH} systemctl status {unit}; journalctl -u {unit} -n 100`",
        ),
        Alert(
            "ReplicaNotReady",
            'up{job="vllm"} == 0',
            f"{monitoring.ready_minutes}m",
            "critical",
            f"vLLM {replica} has not served for {monitoring.ready_minutes} min: "
            f"`{SSH} journalctl -u {unit} -n 200`, then run deploys/vllm.py again",
        ),
        Alert(
            "KvCacheFull",
            f"vllm:kv_cache_usage_perc > {KV_CACHE_FULL}",
            "5m",
            "warning",
            "KV cache of {{ $labels.model_name }} on {{ $labels.host }} is {{ $value | "
            "humanizePercentage }} full: requests queue and get preempted; add replicas "
            "(`Serve(replicas=...)`) or lower max_model_len, then `servekit plan` and deploy",
        ),
        Alert(
            "RequestsWaiting",
            f"vllm:num_requests_waiting > {monitoring.waiting_requests}",
            "5m",
            "warning",
            "{{ $value }} requests wait in {{ $labels.model_name }} replica {{ $labels.replica }}"
            " on {{ $labels.host }}: the replica is saturated; add replicas, or check "
            "`vllm:kv_cache_usage_perc` and the gateway's balance",
        ),
        Alert(
            "TtftSlow",
            "histogram_quantile(0.95, sum by (fleet, model, le) "
            "(rate(vllm:time_to_first_token_seconds_bucket[5m]))) > "
            f"{monitoring.ttft_p95_seconds}",
            "10m",
            "warning",
            "TTFT p95 of {{ $labels.model }} is {{ $value | humanizeDuration }}, above the "
            f"objective of {monitoring.ttft_p95_seconds} s: query "
            '`vllm:num_requests_waiting{model="{{ $labels.model }}"}` and '
            "`vllm:kv_cache_usage_perc` per replica (dashboard servekit-fleet); add replicas",
        ),
    ]


def gpu_count_expr(monitoring: MonitoringHost) -> str | None:
    """Fewer GPUs reporting than declared, per DCGM host (None without DCGM targets)."""
    parts = [
        f"count by (fleet, host) (DCGM_FI_DEV_GPU_TEMP{{host={json.dumps(t.labels['host'])}}}) "
        f"< {int(t.labels['gpus'])}"
        for job in monitoring.jobs
        if job.job == "dcgm"
        for t in job.targets
        if "gpus" in t.labels
    ]
    return " or ".join(f"({part})" for part in parts) or None


def gpu_alerts(monitoring: MonitoringHost) -> list[Alert]:
    gpu = "GPU {{ $labels.gpu }} on {{ $labels.host }}"
    alerts = [
        Alert(
            "GpuXidError",
            "DCGM_FI_DEV_XID_ERRORS != 0",
            "0m",
            "critical",
            f"{gpu} reported Xid {{{{ $value }}}}: `{SSH} sudo dmesg -T | grep -i xid; "
            "nvidia-smi -q`; Xid 79 (fell off the bus) or 48/94/95 (ECC) need the host drained "
            "and rebooted",
        ),
        Alert(
            "GpuEccDoubleBit",
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL > 0",
            "0m",
            "critical",
            f"{gpu} has {{{{ $value }}}} uncorrectable (double-bit) ECC errors since boot: drain "
            f"it, `{SSH} nvidia-smi -q -d ECC,ROW_REMAPPER`, reboot; replace if they return",
        ),
        Alert(
            "GpuTemperatureHigh",
            f"DCGM_FI_DEV_GPU_TEMP > {GPU_TEMPERATURE_C}",
            "5m",
            "warning",
            f"{gpu} is at {{{{ $value }}}} °C: check the fans and airflow, "
            f"`{SSH} nvidia-smi -q -d TEMPERATURE,PERFORMANCE`",
        ),
        Alert(
            "GpuThermalThrottling",
            f"rate(DCGM_FI_DEV_THERMAL_VIOLATION[5m]) / 1e6 > {THROTTLED_FRACTION}",
            "5m",
            "warning",
            f"{gpu} is thermally throttled {{{{ $value | humanizePercentage }}}} of the time: "
            f"`{SSH} nvidia-smi -q -d PERFORMANCE`; check cooling",
        ),
    ]
    return alerts + nvswitch_alerts(gpu) + gpu_count_alerts(monitoring)


def nvswitch_alerts(gpu: str) -> list[Alert]:
    """Only NVSwitch hosts (8-GPU HGX boards) carry the label `nvswitch="true"`."""
    return [
        Alert(
            "FabricManagerDown",
            f'DCGM_FI_DEV_FABRIC_MANAGER_STATUS{{nvswitch="true"}} != {FABRIC_MANAGER_SUCCESS}'
            ' or node_systemd_unit_state{nvswitch="true", '
            'name="nvidia-fabricmanager.service", state="active"} == 0',
            "5m",
            "critical",
            "Fabric Manager is not running on NVSwitch host {{ $labels.host }}: CUDA fails "
            f"there; `{SSH} systemctl status nvidia-fabricmanager; journalctl -u "
            "nvidia-fabricmanager -n 100`, then run deploys/gpu.py",
        ),
        Alert(
            "NvlinkRecoveryErrors",
            'increase(DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL{nvswitch="true"}[10m]) > 0',
            "0m",
            "critical",
            f"NVLink of {gpu} went down and had to recover: `{SSH} nvidia-smi nvlink -s; "
            "nvidia-smi nvlink -e`; links that stay down need the host drained and rebooted",
        ),
    ]


def gpu_count_alerts(monitoring: MonitoringHost) -> list[Alert]:
    expr = gpu_count_expr(monitoring)
    if expr is None:
        return []
    return [
        Alert(
            "GpuMissing",
            expr,
            "2m",
            "critical",
            "{{ $labels.host }} reports {{ $value }} GPUs, fewer than declared (one fell "
            f"off the bus?): `{SSH} nvidia-smi -L; sudo dmesg -T | grep -i xid`, reboot",
        )
    ]


def host_alerts() -> list[Alert]:
    return [
        Alert(
            "NodeDown",
            'up{job="node"} == 0',
            "2m",
            "critical",
            "{{ $labels.host }} does not answer (node exporter down): `ping`/`"
            f"{SSH} systemctl status prometheus-node-exporter`; check the machine",
        ),
        Alert(
            "ExporterDown",
            'up{job=~"dcgm|gateway|blackbox"} == 0',
            "5m",
            "warning",
            "The {{ $labels.job }} exporter on {{ $labels.host }} does not answer: "
            f"`{SSH} systemctl status nvidia-dcgm-exporter` (dcgm), `systemctl status "
            "haproxy` (gateway) or `systemctl status prometheus-blackbox-exporter` (blackbox: "
            "no Ollama probes)",
        ),
        Alert(
            "DiskAlmostFull",
            f"1 - node_filesystem_avail_bytes{{{REAL_FILESYSTEMS}}} / "
            f"node_filesystem_size_bytes{{{REAL_FILESYSTEMS}}} > {DISK_FULL_FRACTION}",
            "10m",
            "warning",
            "{{ $labels.mountpoint }} on {{ $labels.host }} is {{ $value | humanizePercentage }}"
            f" full (weights live in /var/lib/vllm/weights): `{SSH} df -h; du -sh "
            "/var/lib/vllm/weights/*`; remove models the fleet no longer serves",
        ),
        Alert(
            "GatewayErrors",
            "sum by (fleet, host, proxy) "
            '(rate(haproxy_backend_http_responses_total{code="5xx"}[5m])) / sum by '
            "(fleet, host, proxy) (rate(haproxy_backend_http_responses_total[5m])) > "
            f"{GATEWAY_5XX_FRACTION}",
            "5m",
            "warning",
            "{{ $value | humanizePercentage }} of the gateway's answers from {{ $labels.proxy }}"
            " are 5xx: replicas fail or none is up; `ssh {{ $labels.host }} journalctl -u "
            "haproxy -n 100` and the EngineDown alerts",
        ),
    ]


def ollama_alerts() -> list[Alert]:
    """Ollama has no /metrics: the blackbox exporter probes its API (`job="ollama"`)."""
    server = "Ollama ({{ $labels.model }} replica {{ $labels.replica }}) on {{ $labels.host }}"
    return [
        Alert(
            "OllamaDown",
            'probe_success{job="ollama"} == 0',
            "1m",
            "warning",
            f"{server} does not answer {{{{ $labels.instance }}}}: "
            f"`{SSH} systemctl status ollama; journalctl -u ollama -n 100`",
        ),
        Alert(
            "OllamaSlow",
            f'probe_duration_seconds{{job="ollama"}} > {OLLAMA_SLOW_SECONDS}',
            "10m",
            "warning",
            f"{server} takes {{{{ $value | humanizeDuration }}}} to answer `GET /`: the host is "
            f"overloaded; `{SSH} uptime; free -h; journalctl -u ollama -n 100`",
        ),
    ]


def alerts(monitoring: MonitoringHost) -> list[Alert]:
    return engine_alerts(monitoring) + gpu_alerts(monitoring) + host_alerts() + ollama_alerts()


def rules_text(monitoring: MonitoringHost) -> str:
    """The rules file Prometheus loads (one group, every alert)."""
    groups: Value = {
        "groups": [{"name": "servekit", "rules": [a.rule() for a in alerts(monitoring)]}]
    }
    return dump(groups, "# servekit's alert rules (servekit/monitoring/rules.py).\n")


def rules_file(plan: HostPlan) -> str:
    assert plan.monitoring is not None, f"host {plan.name} runs no monitoring"
    return rules_text(plan.monitoring)
