"""The metric names servekit's alert rules and dashboard may use, by the exporter that serves
them. Every rule and panel query is checked against this list (tests/unit/test_monitoring_*),
so a name that exists nowhere fails a test instead of an alert that never fires.

Sources, checked Dec 2026:

- vLLM 0.33 (`vllm serve`'s /metrics): vllm/v1/metrics/loggers.py and docs/design/metrics.md,
  https://github.com/vllm-project/vllm/blob/main/vllm/v1/metrics/loggers.py and
  https://docs.vllm.ai/en/latest/design/metrics.html (`vllm:kv_cache_usage_perc` replaced
  `vllm:gpu_cache_usage_perc`, PR #18354; `vllm:time_per_output_token_seconds` is hidden, use
  `vllm:inter_token_latency_seconds`, PR #24110). The vLLM stand-in (tests/standins/vllm) serves
  the same names; a unit test checks the two agree. Histograms appear as `_bucket`, `_sum`,
  `_count`; counters with their `_total` suffix.
- DCGM exporter: https://github.com/NVIDIA/dcgm-exporter/blob/main/etc/default-counters.csv
  (`DCGM_FI_DEV_ECC_DBE_VOL_TOTAL`, `DCGM_FI_DEV_THERMAL_VIOLATION` and the NVLink error counters
  are commented out there: servekit's counters file, templates/monitoring/dcgm-counters.csv,
  enables them). `DCGM_FI_DEV_FABRIC_MANAGER_STATUS` is DCGM field 170 (value 3 =
  `DcgmFMStatusSuccess`, `dcgmFabricManagerStatus_t` in
  https://github.com/NVIDIA/DCGM/blob/master/dcgmlib/dcgm_structs.h).
- node exporter 1.5 (Debian `prometheus-node-exporter`): collector/filesystem_common.go and
  collector/systemd_linux.go in https://github.com/prometheus/node_exporter (read from the
  binary's own /metrics in tests/unit/test_monitoring_names.py).
- HAProxy 2.6's built-in exporter (`http-request use-service prometheus-exporter`),
  https://github.com/haproxy/haproxy/blob/master/addons/promex/README (read from Debian's haproxy's
  /metrics in tests/unit/test_monitoring_names.py).
- blackbox exporter 0.23 (Debian `prometheus-blackbox-exporter`): `probe_success`,
  `probe_duration_seconds` (prober/handler.go in https://github.com/prometheus/blackbox_exporter;
  read from the binary's own /probe in tests/unit/test_monitoring_names.py).
- Prometheus itself: `up` (https://prometheus.io/docs/concepts/jobs_instances/) and `ALERTS`
  (https://prometheus.io/docs/prometheus/latest/configuration/alerting_rules/).
"""

from __future__ import annotations

import re

from servekit.templating import templates_dir

VLLM_METRICS = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        *(
            f"vllm:{histogram}_{part}"
            for histogram in (
                "time_to_first_token_seconds",
                "inter_token_latency_seconds",
                "e2e_request_latency_seconds",
                "request_queue_time_seconds",
                "request_prompt_tokens",
                "request_generation_tokens",
            )
            for part in ("bucket", "sum", "count")
        ),
    }
)

DCGM_DEFAULT_METRICS = frozenset(
    {
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    }
)
"""Fields NVIDIA's default counters file exports."""

DCGM_SERVEKIT_METRICS = frozenset(
    {
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_THERMAL_VIOLATION",
        "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
        "DCGM_FI_DEV_FABRIC_MANAGER_STATUS",
    }
)
"""Fields only servekit's counters file (templates/monitoring/dcgm-counters.csv) enables."""

DCGM_METRICS = DCGM_DEFAULT_METRICS | DCGM_SERVEKIT_METRICS

FABRIC_MANAGER_SUCCESS = 3
"""`DcgmFMStatusSuccess` in `dcgmFabricManagerStatus_t` (NotSupported 0, NotStarted 1,
InProgress 2, Success 3, Failure 4, Unrecognized 5, NvmlTooOld 6):
https://github.com/NVIDIA/DCGM/blob/master/dcgmlib/dcgm_structs.h"""

NODE_METRICS = frozenset(
    {
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_systemd_unit_state",
    }
)

HAPROXY_METRICS = frozenset(
    {
        "haproxy_backend_http_responses_total",
        "haproxy_backend_active_servers",
    }
)

BLACKBOX_METRICS = frozenset({"probe_success", "probe_duration_seconds"})

PROMETHEUS_METRICS = frozenset({"up", "ALERTS"})

KNOWN_METRICS = (
    VLLM_METRICS
    | DCGM_METRICS
    | NODE_METRICS
    | HAPROXY_METRICS
    | BLACKBOX_METRICS
    | PROMETHEUS_METRICS
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(
    r"(?<![\w:])(?:\d+(?:ms|[smhdwy]))+(?![\w:])|(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
)
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()(?![A-Za-z0-9_:(])")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, label matchers, ranges, grouping
    labels, numbers, functions and Grafana `$variables` left out)."""
    text = _STRING.sub(" ", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\{?\w+\}?", " ", text)
    text = _NUMBER.sub(" ", _GROUPING.sub(" ", text))
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def dcgm_counters() -> str:
    """servekit's counters file for the DCGM exporter (templates/monitoring/dcgm-counters.csv):
    the fields the rules and dashboard read, including those NVIDIA's default leaves out."""
    return (templates_dir() / "monitoring" / "dcgm-counters.csv").read_text()


def counter_fields(csv: str) -> set[str]:
    """The DCGM fields a counters file enables (comments and blank lines skipped)."""
    rows = (line.split(",", 1)[0].strip() for line in csv.splitlines())
    return {row for row in rows if row and not row.startswith("#")}
