"""The Grafana dashboard (dashboards/servekit-fleet.json): valid panels, every query parsed by
Prometheus's own parser (`promtool check rules` on the queries as recording rules), only metric
names from servekit's checked list (the one the alert rules are held to) and, for vLLM, names the
stand-in's /metrics serves; only labels the targets carry (servekit's target labels, Prometheus's
`job`/`instance`, the exporters' own); and Grafana's provisioning loads this very file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from monitoring_fleet import team_fleet
from standins.vllm._engine import Engine, Knobs

from servekit.hostplan import HostPlan
from servekit.monitoring.grafana import GRAFANA, grafana_files
from servekit.monitoring.metrics import KNOWN_METRICS, metric_names
from servekit.monitoring.yamltext import dump
from servekit.placement import plan_fleet
from servekit.spec import Gateway, GpuSetup, Grafana, SecretRef

DASHBOARD = Path(__file__).parents[2] / "dashboards" / "servekit-fleet.json"
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$fleet": "team", "$model": ".*"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    """Every PromQL expression: panel targets, variables (inside label_values), annotations."""
    board = dashboard()
    found = [t["expr"] for p in panels() for t in p["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: expected label_values(QUERY, LABEL)"
            found.append(match.group(1))
    found += [a["expr"] for a in board["annotations"]["list"]]
    return found


def test_panels_are_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "servekit-fleet"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["type"] == "timeseries", panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_every_query_uses_only_checked_metric_names() -> None:
    for expr in queries():
        used = metric_names(expr)
        assert used, f"no metric in {expr!r}"
        assert used <= KNOWN_METRICS, f"unknown {sorted(used - KNOWN_METRICS)} in {expr!r}"


def test_the_overview_shows_what_the_issue_asks_for() -> None:
    used = set().union(*(metric_names(e) for e in queries()))
    wanted = {
        "vllm:request_success_total",  # requests/s per replica
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:generation_tokens_total",  # tokens/s
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_waiting",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_XID_ERRORS",
    }
    assert wanted <= used, sorted(wanted - used)


def test_prometheus_parses_every_query(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "install promtool (apt-get install prometheus; .ci/run does)"
    rules = []
    for number, expr in enumerate(queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query{number}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


LABEL_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
EXPOSED_LABEL = re.compile(r"[{,]([A-Za-z_][A-Za-z0-9_]*)=")
PROMETHEUS_LABELS = {"job", "instance", "le", "alertname", "alertstate"}
"""Prometheus adds `job` and `instance` to every target; `le` is every histogram's bucket label;
`ALERTS` carries `alertname` and `alertstate`
(https://prometheus.io/docs/concepts/jobs_instances/,
https://prometheus.io/docs/prometheus/latest/configuration/alerting_rules/)."""
DCGM_LABELS = {"gpu", "UUID"}
"""dcgm-exporter's own labels (https://github.com/NVIDIA/dcgm-exporter#quickstart)."""
HAPROXY_LABELS = {"proxy", "code"}
"""HAProxy's exporter (Debian's haproxy answers `haproxy_backend_http_responses_total{proxy=,
code=}`: tests/unit/test_monitoring_names.py reads it from the real binary)."""


def monitored_plan() -> HostPlan:
    """A fleet with every kind of target: a vLLM replica, a gateway, node and DCGM exporters,
    and Grafana beside Prometheus."""
    fleet = team_fleet(
        {
            "gateway": Gateway(host="mon", api_keys=SecretRef(env="KEYS")),
            "gpu_setup": GpuSetup(dcgm=True),
        },
        grafana=Grafana(signing_key="~/grafana.asc", admin_password=SecretRef(env="GF")),
    )
    return plan_fleet(fleet).hosts["mon"]


def standin_exposition() -> str:
    engine = Engine(
        model_name="m", max_model_len=4096, max_num_seqs=8, cache_info={}, knobs=Knobs()
    )
    return engine.render_metrics()


def test_every_vllm_name_is_served_by_the_standin() -> None:
    exposition = standin_exposition()
    used = {n for e in queries() for n in metric_names(e) if n.startswith("vllm:")}
    assert used, "the dashboard shows no engine metric"
    missing = {n for n in used if not re.search(rf"^{re.escape(n)}[{{ ]", exposition, re.M)}
    assert not missing, sorted(missing)


def test_every_label_the_queries_use_exists_on_the_targets() -> None:
    plan = monitored_plan()
    assert plan.monitoring is not None
    jobs = {job.job for job in plan.monitoring.jobs}
    assert {"vllm", "node", "gateway", "dcgm"} <= jobs
    target_labels = {k for job in plan.monitoring.jobs for t in job.targets for k in t.labels}
    vllm_labels = set(EXPOSED_LABEL.findall(standin_exposition()))
    known = target_labels | vllm_labels | PROMETHEUS_LABELS | DCGM_LABELS | HAPROXY_LABELS
    for expr in queries():
        used = set(LABEL_MATCHER.findall(expr))
        for grouping in GROUPING.findall(expr):
            used |= {label.strip() for label in grouping.split(",") if label.strip()}
        assert used <= known, f"unknown labels {sorted(used - known)} in {expr!r}"
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, f"no scrape job {job!r}: {expr!r}"


def test_the_label_check_catches_an_unknown_label() -> None:
    expr = 'sum by (modle) (vllm:num_requests_waiting{fleet="x"})'
    used = set(LABEL_MATCHER.findall(expr)) | {
        label.strip() for grouping in GROUPING.findall(expr) for label in grouping.split(",")
    }
    assert used == {"fleet", "modle"}


def test_grafana_provisioning_loads_this_dashboard_from_its_prometheus() -> None:
    files = {f.path: f for f in grafana_files(monitored_plan(), "password", "key")}
    assert files[GRAFANA.dashboard_file].content == DASHBOARD.read_text()
    provider = files[GRAFANA.dashboard_provider_file].content
    assert f'path: "{GRAFANA.dashboards_directory}"' in provider
    assert GRAFANA.dashboard_file.startswith(GRAFANA.dashboards_directory + "/")
    source = files[GRAFANA.datasource_file].content
    for panel in panels():
        assert f'type: "{panel["datasource"]["type"]}"' in source, panel["title"]
