"""The Grafana dashboard (dashboards/servekit-fleet.json): valid panels, every query parsed by
Prometheus's own parser (`promtool check rules` on the queries as recording rules), and only
metric names from servekit's checked list (the one the alert rules are held to)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from servekit.monitoring.metrics import KNOWN_METRICS, metric_names
from servekit.monitoring.yamltext import dump

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
