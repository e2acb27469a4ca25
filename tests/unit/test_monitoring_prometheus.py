"""Debian's real Prometheus run with servekit's rendered files (its own ARGS line, the scrape
configuration, the rules) against the vLLM stand-in on loopback: the engine target is up with
servekit's labels, vLLM's series arrive labelled, and stopping the engine puts EngineDown and
ReplicaNotReady into `pending` (their `for` is minutes: firing itself is `promtool test rules`'
job, tests/unit/test_monitoring_rules.py)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from standins import harness as h

from servekit.hostplan import HostPlan, ScrapeJob, ScrapeTarget
from servekit.monitoring import MonitoringLayout, monitoring_files
from servekit.placement import plan_fleet
from servekit.spec import Fleet, Gpu, Monitoring, SecretRef, Serve, SshHost

READY = "Application startup complete."
LABELS = {
    "fleet": "team",
    "host": "g1",
    "role": "engine",
    "model": "qwen",
    "replica": "0",
    "unit": "vllm-qwen",
}


def monitoring_plan(prometheus_port: int, engine_port: int) -> HostPlan:
    fleet = Fleet(
        name="team",
        machines=[
            SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
            SshHost(name="mon", address="10.0.0.8"),
        ],
        serve=[Serve(model="qwen2.5-7b-instruct", hosts=["g1"])],
        monitoring=Monitoring(host="mon", port=prometheus_port, scrape_interval="1s"),
        engine_api_key=SecretRef(env="ENGINE_KEY"),
    )
    plan = plan_fleet(fleet).hosts["mon"]
    assert plan.monitoring is not None
    engine = ScrapeTarget(address=f"127.0.0.1:{engine_port}", labels=LABELS)
    jobs = [ScrapeJob(job="vllm", targets=[engine])]  # the engine, here on loopback
    return plan.model_copy(update={"monitoring": plan.monitoring.model_copy(update={"jobs": jobs})})


def query(port: int, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}, timeout=5)
    assert answer.status_code == 200, answer.text
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def wait_for(port: int, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with_prometheus_up = True
        try:
            found = query(port, promql)
        except httpx.TransportError:
            with_prometheus_up, found = False, []
        if found:
            return found
        time.sleep(0.3 if with_prometheus_up else 0.1)
    raise AssertionError(f"no answer to {promql} within {timeout} s")


def test_prometheus_scrapes_the_engine_and_notices_when_it_stops(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "install prometheus (apt-get install prometheus; .ci/run does)"
    prometheus_port, engine_port = h.free_port(), h.free_port()
    layout = MonitoringLayout.under(str(tmp_path / "etc"))
    for rendered in monitoring_files(monitoring_plan(prometheus_port, engine_port), None, layout):
        Path(rendered.path).parent.mkdir(parents=True, exist_ok=True)
        Path(rendered.path).write_text(rendered.content)
    defaults = Path(layout.prometheus_defaults).read_text().splitlines()[-1]
    args = shlex.split(defaults.removeprefix("ARGS="))[0].split()  # as Debian's unit passes them
    argv = [binary, f"--config.file={layout.prometheus_config}", *args]
    argv.append(f"--storage.tsdb.path={tmp_path / 'data'}")
    prometheus = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine_argv = h.vllm_argv(
        "serve", "org/qwen", "--host", "127.0.0.1", "--port", str(engine_port)
    )
    try:
        with h.running(engine_argv, h.vllm_env(), tmp_path, "engine", ready_log=READY):
            (up,) = wait_for(prometheus_port, 'up{job="vllm"} == 1')
            instance = f"127.0.0.1:{engine_port}"
            assert up["metric"] == {"__name__": "up", "job": "vllm", "instance": instance} | LABELS
            (waiting,) = wait_for(prometheus_port, "vllm:num_requests_waiting")
            assert waiting["metric"]["model"] == "qwen" and waiting["metric"]["fleet"] == "team"
            assert waiting["metric"]["model_name"] == "org/qwen"
            # no blackbox exporter runs here: its own ExporterDown is the only alert
            assert not query(prometheus_port, 'ALERTS{job!="blackbox"}')
        pending = wait_for(prometheus_port, 'ALERTS{alertstate="pending", job="vllm"}', timeout=20)
        names = sorted(alert["metric"]["alertname"] for alert in pending)
        assert names == ["EngineDown", "ReplicaNotReady"]
        assert all(alert["metric"]["unit"] == "vllm-qwen" for alert in pending)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=20)
