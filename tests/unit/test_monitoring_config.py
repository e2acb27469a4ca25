"""The monitoring host's files from a planned fleet: Prometheus's scrape configuration (every
target labelled), Debian's ARGS files, Alertmanager's routes; each checked by Debian's own
`promtool check config` and `amtool check-config` (`apt-get install prometheus
prometheus-alertmanager`; .ci/run does)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from servekit.hostplan import HostPlan, ScrapeJob, ScrapeTarget
from servekit.monitoring import MONITORING, MonitoringLayout, monitoring_files
from servekit.monitoring.prometheus import alertmanager_config, prometheus_config
from servekit.monitoring.yamltext import dump
from servekit.placement import plan_fleet
from servekit.secrets import SecretError
from servekit.spec import Fleet, Gateway, Gpu, GpuSetup, Monitoring, SecretRef, Serve, SshHost

HOOK = "https://hooks.example.com/services/T0/B0/secret-part?x=1"


def fleet_plan(**monitoring: object) -> dict[str, HostPlan]:
    declared = Fleet(
        name="team",
        machines=[
            SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
            SshHost(name="g2", address="10.0.0.2", gpu=Gpu(model="L4")),
            SshHost(name="gw", address="10.0.0.9"),
        ],
        serve=[Serve(model="qwen2.5-7b-instruct", hosts=["g1", "g2"])],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="CLIENT_KEYS")),
        monitoring=Monitoring(host="gw", **monitoring),  # type: ignore[arg-type]
        gpu_setup=GpuSetup(dcgm=True),
        engine_api_key=SecretRef(env="ENGINE_KEY"),
    )
    return plan_fleet(declared).hosts


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"install {name} (apt-get install prometheus prometheus-alertmanager)"
    return found


def write(tmp_path: Path, plan: HostPlan, webhook: str | None) -> MonitoringLayout:
    layout = MonitoringLayout.under(str(tmp_path))
    for rendered in monitoring_files(plan, webhook, layout):
        Path(rendered.path).parent.mkdir(parents=True, exist_ok=True)
        Path(rendered.path).write_text(rendered.content)
    return layout


def check(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_only_the_monitoring_host_has_a_monitoring_plan() -> None:
    hosts = fleet_plan()
    assert hosts["gw"].monitoring is not None
    assert hosts["g1"].monitoring is None and hosts["g2"].monitoring is None


@pytest.mark.parametrize("webhook", [None, HOOK])
def test_promtool_and_amtool_accept_the_rendered_files(tmp_path: Path, webhook: str | None) -> None:
    layout = write(tmp_path, fleet_plan()["gw"], webhook)
    result = check(tool("promtool"), "check", "config", layout.prometheus_config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr
    result = check(tool("amtool"), "check-config", layout.alertmanager_config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{1 if webhook is None else 2} receivers" in result.stdout


def test_promtool_refuses_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: a scrape interval Prometheus cannot parse is refused."""
    layout = write(tmp_path, fleet_plan()["gw"], None)
    path = Path(layout.prometheus_config)
    path.write_text(path.read_text().replace('scrape_interval: "15s"', 'scrape_interval: "15x"'))
    assert check(tool("promtool"), "check", "config", str(path)).returncode != 0


def scrape(plan: HostPlan) -> dict[str, list[dict[str, object]]]:
    config = yaml.safe_load(prometheus_config(plan, MONITORING))
    return {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}


def test_every_target_is_labelled_with_fleet_host_and_role() -> None:
    jobs = scrape(fleet_plan()["gw"])
    assert set(jobs) == {
        "prometheus",
        "alertmanager",
        "blackbox",
        "vllm",
        "node",
        "gateway",
        "dcgm",
    }
    engines = {(c["targets"][0], c["labels"]["host"]) for c in jobs["vllm"]}  # type: ignore[index]
    assert engines == {("10.0.0.1:8000", "g1"), ("10.0.0.2:8000", "g2")}
    for static in jobs["vllm"]:
        labels = static["labels"]
        assert labels["fleet"] == "team" and labels["role"] == "engine"  # type: ignore[index]
        assert labels["model"] == "qwen2-5-7b-instruct"  # type: ignore[index]
        assert labels["unit"] == "vllm-qwen2-5-7b-instruct"  # type: ignore[index]
        assert labels["gpus"] == "1" and labels["nvswitch"] == "false"  # type: ignore[index]
    assert sorted(s["labels"]["replica"] for s in jobs["vllm"]) == ["0", "1"]  # type: ignore[index]
    nodes = {s["targets"][0]: s["labels"]["role"] for s in jobs["node"]}  # type: ignore[index]
    assert nodes == {"10.0.0.1:9100": "node", "10.0.0.2:9100": "node", "127.0.0.1:9100": "node"}
    assert [s["targets"] for s in jobs["gateway"]] == [["127.0.0.1:8080"]]
    assert sorted(s["targets"][0] for s in jobs["dcgm"]) == ["10.0.0.1:9400", "10.0.0.2:9400"]  # type: ignore[index]


def test_prometheus_and_alertmanager_listen_on_loopback_with_the_fleets_retention() -> None:
    plan = fleet_plan(port=9190, retention="30d")["gw"]
    files = {f.path: f for f in monitoring_files(plan, None)}
    assert files[MONITORING.prometheus_defaults].content.endswith(
        'ARGS="--web.listen-address=127.0.0.1:9190 --storage.tsdb.retention.time=30d"\n'
    )
    assert files[MONITORING.alertmanager_defaults].content.endswith(
        'ARGS="--web.listen-address=127.0.0.1:9093 --cluster.listen-address="\n'
    )
    assert files[MONITORING.blackbox_defaults].content.endswith(
        'ARGS="--config.file=/etc/prometheus/blackbox.yml --web.listen-address=127.0.0.1:9115"\n'
    )
    assert MONITORING.node_exporter_defaults not in files  # every host's: exporter_files
    alertmanager = files[MONITORING.alertmanager_config]
    assert (alertmanager.mode, alertmanager.user, alertmanager.group) == (
        "0640",
        "root",
        "prometheus",
    )


def test_without_a_webhook_alerts_go_nowhere() -> None:
    config = yaml.safe_load(alertmanager_config(None))
    assert config["route"]["receiver"] == "null"
    assert config["receivers"] == [{"name": "null"}]


def test_the_webhook_receives_every_alert_with_resolutions() -> None:
    config = yaml.safe_load(alertmanager_config(HOOK))
    assert config["route"]["receiver"] == "webhook"
    hook = config["receivers"][1]["webhook_configs"][0]
    assert hook == {"url": HOOK, "send_resolved": True}


def test_the_webhook_secret_is_carried_in_the_plan_never_its_value() -> None:
    plan = fleet_plan(alert_webhook=SecretRef(env="ALERT_HOOK"))["gw"]
    assert plan.monitoring is not None and plan.monitoring.alert_webhook is not None
    assert plan.monitoring.alert_webhook.env == "ALERT_HOOK"


@pytest.mark.parametrize(
    "url", ["ftp://x/zq-1", "zq-2 not a url", "https://", "https://h/zq-3 x", "https://h/zq-4\n"]
)
def test_a_bad_webhook_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(SecretError) as caught:
        alertmanager_config(url)
    assert url.strip() not in str(caught.value)


def test_a_target_without_an_address_is_refused() -> None:
    plan = fleet_plan()["gw"]
    assert plan.monitoring is not None
    job = ScrapeJob(job="node", targets=[ScrapeTarget(address="<g3>:9100", labels={})])
    broken = plan.model_copy(
        update={"monitoring": plan.monitoring.model_copy(update={"jobs": [job]})}
    )
    with pytest.raises(ValueError, match="no address yet"):
        prometheus_config(broken)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.lists(st.text())),
        max_size=5,
    )
)
def test_any_value_reads_back_as_written(value: dict[str, object]) -> None:
    """Quotes, colons, newlines, `#` or `{{` in a value never change the YAML's structure."""
    assert yaml.safe_load(dump({"labels": value, "after": "x"})) == {"labels": value, "after": "x"}  # type: ignore[dict-item]
