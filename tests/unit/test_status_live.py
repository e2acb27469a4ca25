"""`servekit status` against a real fleet on loopback: Debian's Prometheus (servekit's rendered
configuration and rules) scraping two vLLM stand-in replicas (127.0.0.1 and 127.0.0.2), Debian's
node exporter and two small stand-in DCGM exporters. The snapshot's values are Prometheus' own
answers to the same queries at the same time; the engines mode reads the same replicas; a
stopped replica makes both modes exit 1 naming it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standins import harness as h
from standins.prometheus import start_prometheus

from servekit.hostplan import HostPlan, ScrapeJob, ScrapeTarget
from servekit.inventory import load_fleet_and_plan
from servekit.status.declared import TTFT
from servekit.status.expositions import bucket_quantile, buckets, parse, total
from servekit.status.prometheus import gpu_queries, replica_queries

ROOT = Path(__file__).resolve().parents[2]
READY = "Application startup complete."
MODEL = "qwen2-5-7b-instruct"
ADDRESSES = {"g1": "127.0.0.1", "g2": "127.0.0.2"}
# (util %, FB used MiB, FB free MiB, temperature °C) per host: DCGM's units
# (https://github.com/NVIDIA/dcgm-exporter/blob/main/etc/default-counters.csv).
GPUS = {"g1": (37.0, 10240.0, 12288.0, 61.0), "g2": (55.0, 20480.0, 2048.0, 74.0)}

INVENTORY = """
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, GpuSetup, Monitoring, SecretRef, Serve, SshHost

fleet = Fleet(
    name="stat",
    machines=[
        SshHost(name="g1", address="127.0.0.1", gpu=Gpu(model="L4")),
        SshHost(name="g2", address="127.0.0.2", gpu=Gpu(model="L4")),
        SshHost(name="mon", address="127.0.0.3"),
    ],
    serve=[Serve(model="qwen2.5-7b-instruct", hosts=["g1", "g2"], port={engine_port})],
    monitoring=Monitoring(host="mon", port={prometheus_port}, scrape_interval="1s"),
    gpu_setup=GpuSetup(dcgm=True),
    engine_api_key=SecretRef(env="STATUS_TEST_ENGINE_KEY"),
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


def dcgm_text(host: str) -> bytes:
    util, used, free, temp = GPUS[host]
    labels = f'gpu="0",UUID="GPU-{host}",device="nvidia0",modelName="NVIDIA L4",Hostname="{host}"'
    lines = [
        f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {util}",
        f"DCGM_FI_DEV_FB_USED{{{labels}}} {used}",
        f"DCGM_FI_DEV_FB_FREE{{{labels}}} {free}",
        f"DCGM_FI_DEV_GPU_TEMP{{{labels}}} {temp}",
    ]
    return ("\n".join(lines) + "\n").encode()


def dcgm_standin(host: str) -> ThreadingHTTPServer:
    """A DCGM exporter's /metrics with fixed values (real names and labels), on a free port."""
    body = dcgm_text(host)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Rig:
    inventory: Path
    prometheus_url: str
    engines: dict[str, h.Proc]
    engine_port: int

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
        answer = httpx.get(f"{self.prometheus_url}/api/v1/query", params=params, timeout=5)
        assert answer.status_code == 200, answer.text
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def wait_for(self, promql: str, count: int = 1, timeout: float = 40) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = self.query(promql)
            except httpx.TransportError:
                found = []
            if len(found) >= count:
                return found
            time.sleep(0.3)
        raise AssertionError(f"fewer than {count} answers to {promql} within {timeout} s")

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "servekit.cli", "status", str(self.inventory), *args]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)

    def load(self, host: str, requests: int) -> None:
        for number in range(requests):
            body = {"model": "qwen", "prompt": f"tell me {number} things", "max_tokens": 8}
            port, address = self.engine_port, ADDRESSES[host]
            status, _, text = h.request(port, "POST", "/v1/completions", body, host=address)
            assert status == 200, text


def monitoring_plan(plan: HostPlan, ports: dict[str, int]) -> HostPlan:
    """The monitoring host's plan, its node and DCGM targets moved to this test's exporters."""
    assert plan.monitoring is not None
    jobs = []
    for job in plan.monitoring.jobs:
        targets = [
            target
            if job.job == "vllm"
            else ScrapeTarget(
                address=f"127.0.0.1:{ports[job.job + target.labels['host']]}", labels=target.labels
            )
            for target in job.targets
        ]
        jobs.append(ScrapeJob(job=job.job, targets=targets))
    return plan.model_copy(update={"monitoring": plan.monitoring.model_copy(update={"jobs": jobs})})


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("status")
    engine_port, prometheus_port, node_port = h.free_port(), h.free_port(), h.free_port()
    inventory = folder / "stat.py"
    inventory.write_text(INVENTORY.format(engine_port=engine_port, prometheus_port=prometheus_port))
    _fleet, plan = load_fleet_and_plan(inventory)
    exporters = {host: dcgm_standin(host) for host in GPUS}
    ports = {f"node{host}": node_port for host in ("g1", "g2", "mon")}
    ports |= {f"dcgm{host}": server.server_address[1] for host, server in exporters.items()}
    prometheus = start_prometheus(monitoring_plan(plan.hosts["mon"], ports), folder)
    node_binary = shutil.which("prometheus-node-exporter")
    assert node_binary, "install prometheus-node-exporter (apt-get; .ci/run does)"
    node_argv = [node_binary, f"--web.listen-address=127.0.0.1:{node_port}"]
    engines: dict[str, h.Proc] = {}
    try:
        with h.running(node_argv, {}, folder, "node"):
            for host, address in ADDRESSES.items():
                argv = h.vllm_argv(
                    "serve", "org/qwen", "--served-model-name", "qwen",
                    "--host", address, "--port", str(engine_port),
                )  # fmt: skip
                engines[host] = h.Proc(argv, h.vllm_env(), folder, f"engine-{host}")
                engines[host].wait_log(READY)
            url = f"http://127.0.0.1:{prometheus_port}"
            yield Rig(inventory, url, engines, engine_port)
    finally:
        for engine in engines.values():
            engine.stop()
        for server in exporters.values():
            server.shutdown()
        prometheus.terminate()
        prometheus.wait(timeout=20)


def _by_replica(result: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {(r["metric"]["host"], r["metric"]["replica"]): float(r["value"][1]) for r in result}


def test_json_values_are_prometheus_own_answers(rig: Rig) -> None:
    rig.wait_for('up{fleet="stat"} == 1', count=8)  # 2 engines, 3 node, 2 DCGM, Prometheus
    for host in ("g1", "g2"):  # after a first scrape: rate() needs the counters before
        rig.load(host, 6 if host == "g1" else 3)
    queries = replica_queries("stat", "1m")
    rig.wait_for(f"{queries['ttft_p95_s']} > 0", count=2)
    done = rig.status("--prometheus", rig.prometheus_url, "--once", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert status["schema"] == "servekit.status/1" and status["source"] == "prometheus"
    assert status["down"] == [] and status["window_s"] == 60
    rows = {(r["host"], str(r["replica"])): r for r in status["replicas"]}
    assert sorted(rows) == [("g1", "0"), ("g2", "1")]
    for field, expr in queries.items():
        answers = _by_replica(rig.query(expr, at=status["at"]))
        if field == "up":
            assert answers == {key: 1.0 for key in rows}
            continue
        assert answers.keys() == rows.keys(), field
        assert {key: rows[key][field] for key in rows} == answers, field
    g1, g2 = rows[("g1", "0")], rows[("g2", "1")]
    assert g1["requests_per_s"] > g2["requests_per_s"] > 0  # 6 requests against 3
    assert g1["tokens_per_s"] > 0 and g1["ttft_p50_s"] > 0 and 0 <= g1["kv_cache_pct"] <= 100
    assert all(r["up"] and r["model"] == MODEL for r in rows.values())
    targets = sorted((t["job"], t["host"], t["up"]) for t in status["targets"])
    assert targets == [("dcgm", "g1", True), ("dcgm", "g2", True)] + [
        ("node", host, True) for host in ("g1", "g2", "mon")
    ]
    hosts = {h["host"]: h for h in status["hosts"]}
    assert hosts["mon"] == {
        "host": "mon",
        "roles": ["monitoring"],
        "replicas_up": 0,
        "replicas": 0,
        "exporters_down": [],
        "exporters": 1,  # its node exporter
        "gpus": 0,
        "gpus_reporting": None,
    }
    for host in ("g1", "g2"):
        assert hosts[host]["replicas_up"] == hosts[host]["replicas"] == 1
        assert hosts[host]["exporters"] == 2 and hosts[host]["exporters_down"] == []
        assert hosts[host]["gpus"] == hosts[host]["gpus_reporting"] == 1
    gpus = {g["host"]: g for g in status["gpus"]}
    for host, (util, used, free, temp) in GPUS.items():
        assert gpus[host] == {
            "host": host,
            "gpu": "0",
            "util_pct": util,
            "memory_used_mib": used,
            "memory_total_mib": used + free,
            "temperature_c": temp,
        }
    for field, expr in gpu_queries("stat").items():
        answers = {r["metric"]["host"]: float(r["value"][1]) for r in rig.query(expr, status["at"])}
        assert answers == {host: gpus[host][field] for host in GPUS}, field


def test_the_text_view_shows_every_replica_and_gpu(rig: Rig) -> None:
    done = rig.status("--prometheus", rig.prometheus_url, "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    assert "fleet stat at" in text and rig.prometheus_url in text
    for host in ("g1", "g2"):
        assert text.count(f"│ {host} ") >= 2  # its replica row and its GPU row
    assert "1 of 1" in text and "2 up" in text  # g1's replica, g1's exporters
    assert "37 %" in text and "74 °C" in text


def test_engines_mode_quantiles_are_prometheus_histogram_quantile(rig: Rig) -> None:
    """The engines mode computes histogram_quantile itself: over the same cumulative buckets
    (once Prometheus has scraped the engine's latest counts) it answers what Prometheus does."""
    rig.load("g1", 5)
    engine = httpx.get(f"http://127.0.0.1:{rig.engine_port}/metrics", timeout=5).text
    samples = parse(engine)
    served = total(samples, "vllm:request_success_total")
    rig.wait_for(f'sum(vllm:request_success_total{{host="g1"}}) == {served}')
    for q in (0.5, 0.95, 0.99):
        expr = f'histogram_quantile({q}, sum by (le) ({TTFT}_bucket{{host="g1"}}))'
        (answer,) = rig.query(expr)
        assert bucket_quantile(q, buckets(samples, TTFT)) == pytest.approx(
            float(answer["value"][1]), rel=1e-12
        )


def test_engines_mode_reads_each_replica(rig: Rig) -> None:
    stop = threading.Event()

    def keep_loading() -> None:
        while not stop.is_set():
            rig.load("g2", 1)

    loader = threading.Thread(target=keep_loading)
    loader.start()
    try:
        done = rig.status("--engines", "--once", "--json", "--interval", "1.5")
    finally:
        stop.set()
        loader.join(timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert status["source"] == "engines" and status["source_url"] is None
    assert 1.4 < status["window_s"] < 5
    rows = {r["host"]: r for r in status["replicas"]}
    assert all(r["up"] and r["ready"] for r in rows.values())
    assert rows["g2"]["requests_per_s"] > 0 and rows["g2"]["tokens_per_s"] > 0
    assert rows["g2"]["ttft_p50_s"] is not None and rows["g2"]["kv_cache_pct"] is not None
    assert rows["g1"]["requests_per_s"] == 0 and rows["g1"]["ttft_p50_s"] is None  # idle
    hosts = {h["host"]: h for h in status["hosts"]}
    assert hosts["g2"]["replicas_up"] == 1 and hosts["g2"]["exporters"] == 0
    assert hosts["g2"]["gpus"] == 1 and hosts["g2"]["gpus_reporting"] is None  # not read here


def test_a_stopped_replica_exits_non_zero_and_is_named(rig: Rig) -> None:
    rig.engines["g2"].stop()
    rig.wait_for('up{job="vllm",host="g2"} == 0')
    rig.wait_for('ALERTS{alertname="EngineDown",host="g2"}')  # pending: its `for` is 1m
    name = f"replica {MODEL}#1 on g2 (vllm-{MODEL})"
    done = rig.status("--prometheus", rig.prometheus_url, "--once", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert [d.split(":")[0] for d in status["down"]] == [name]
    assert name in done.stderr
    rows = {r["host"]: r for r in status["replicas"]}
    assert rows["g1"]["up"] and not rows["g2"]["up"]
    hosts = {h["host"]: h for h in status["hosts"]}
    assert (hosts["g1"]["replicas_up"], hosts["g2"]["replicas_up"]) == (1, 0)
    assert "connection refused" in rows["g2"]["reason"]
    assert rows["g2"]["requests_per_s"] is None  # not its load of the last minute, before it died
    alerts = [(a["name"], a["host"], a["state"]) for a in status["alerts"]]
    assert ("EngineDown", "g2", "pending") in alerts
    summary = next(a["summary"] for a in status["alerts"] if a["name"] == "EngineDown")
    assert f"vllm-{MODEL}" in summary  # the summary tells the operator what to run
    direct = rig.status("--engines", "--once", "--json", "--interval", "0.5")
    assert direct.returncode == 1, direct.stdout + direct.stderr
    assert [d.split(":")[0] for d in json.loads(direct.stdout)["down"]] == [name]
    assert "Connection refused" in direct.stderr or "connection refused" in direct.stderr
