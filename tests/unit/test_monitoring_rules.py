"""servekit's alert rules, checked by Debian's own Prometheus tools (`apt-get install
prometheus`; .ci/run does): `promtool check rules` on the rendered file, and `promtool test rules`
with tests/data/monitoring/servekit_rules_test.yml, which has a firing and a not-firing case for
every alert. Every metric name the rules read must be on the checked list of real names."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from servekit.hostplan import MonitoringHost, ScrapeJob, ScrapeTarget
from servekit.monitoring.metrics import KNOWN_METRICS, metric_names
from servekit.monitoring.rules import alerts, rules_text

RULES_TEST = Path(__file__).parents[1] / "data" / "monitoring" / "servekit_rules_test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "install promtool (apt-get install prometheus; .ci/run does)"
    return found


def dcgm_target(host: str, gpus: int, nvswitch: bool) -> ScrapeTarget:
    labels = {"fleet": "team", "host": host, "role": "gpu", "gpus": str(gpus)}
    return ScrapeTarget(address=f"{host}:9400", labels=labels | {"nvswitch": str(nvswitch).lower()})


def monitoring(**changes: object) -> MonitoringHost:
    """The monitoring host the promtool test file was written for."""
    declared: dict[str, object] = {
        "port": 9090,
        "scrape_interval": "15s",
        "retention": "15d",
        "jobs": [
            ScrapeJob(
                job="dcgm", targets=[dcgm_target("hgx1", 8, True), dcgm_target("g2", 1, False)]
            )
        ],
        "ttft_p95_seconds": 2.0,
        "waiting_requests": 10,
        "ready_minutes": 20,
    }
    return MonitoringHost.model_validate(declared | changes)


def run_rule_tests(tmp_path: Path, host: MonitoringHost) -> subprocess.CompletedProcess[str]:
    (tmp_path / "servekit.rules.yml").write_text(rules_text(host))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    return subprocess.run(
        [promtool(), "test", "rules", RULES_TEST.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promtool_accepts_the_rendered_rules(tmp_path: Path) -> None:
    path = tmp_path / "servekit.rules.yml"
    path.write_text(rules_text(monitoring()))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(monitoring()))} rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_as_the_unit_tests_expect(tmp_path: Path) -> None:
    result = run_rule_tests(tmp_path, monitoring())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("changes", "alert"),
    [
        ({"waiting_requests": 11}, "RequestsWaiting"),
        ({"ttft_p95_seconds": 5.0}, "TtftSlow"),
        ({"ready_minutes": 30}, "ReplicaNotReady"),
    ],
)
def test_the_rule_tests_fail_when_a_threshold_moves(
    tmp_path: Path, changes: dict[str, object], alert: str
) -> None:
    """The fleet's thresholds reach the rules: other values break the expectations."""
    result = run_rule_tests(tmp_path, monitoring(**changes))
    assert result.returncode != 0
    assert f"alertname: {alert}" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [
        case
        for group in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in group["alert_rule_test"]
    ]
    for alert in alerts(monitoring()):
        mine = [case for case in cases if case["alertname"] == alert.name]
        assert any(case["exp_alerts"] for case in mine), f"{alert.name} never fires in a test"
        assert any(not case["exp_alerts"] for case in mine), f"{alert.name} is never quiet"


def test_the_gpu_count_alert_names_each_dcgm_host_with_its_declared_count() -> None:
    [missing] = [a for a in alerts(monitoring()) if a.name == "GpuMissing"]
    assert 'DCGM_FI_DEV_GPU_TEMP{host="hgx1"}) < 8' in missing.expr
    assert 'DCGM_FI_DEV_GPU_TEMP{host="g2"}) < 1' in missing.expr
    assert "GpuMissing" not in {a.name for a in alerts(monitoring(jobs=[]))}


def test_rules_read_only_metric_names_that_exist() -> None:
    for alert in alerts(monitoring()):
        used = metric_names(alert.expr)
        assert used, f"{alert.name}: no metric found in {alert.expr!r}"
        assert used <= KNOWN_METRICS, f"{alert.name}: unknown {sorted(used - KNOWN_METRICS)}"


def test_every_summary_tells_what_to_run() -> None:
    for alert in alerts(monitoring()):
        assert "`" in alert.summary, f"{alert.name}: no command in its summary"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("rate(a_total[5m]) / 1e6 > 0.1", {"a_total"}),
        ('sum by (le, model) (rate(vllm:x_bucket{m="$m"}[$__rate_interval]))', {"vllm:x_bucket"}),
        ("up offset 1h30m and on (host) b == 3", {"up", "b"}),
        ('c{a="up"} unless ignoring (x) d', {"c", "d"}),
    ],
)
def test_metric_names_finds_only_metrics(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
