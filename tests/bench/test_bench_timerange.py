"""A benchmark records the wall-clock range its load covered and, for a fleet with monitoring,
a link to that range in the fleet's Prometheus: with Debian's Prometheus scraping the stand-in
engine during the run, the link's own queries over its own range show the run's tokens."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from bench_helpers import Server, bench, free_port
from standins.prometheus import start_prometheus
from typer.testing import CliRunner

from servekit.bench.schema import BenchResult, TimeRange
from servekit.bench.target import from_fleet
from servekit.bench.timerange import MARGIN_S, fleet_prometheus, prometheus_link, run_queries
from servekit.cli import app
from servekit.hostplan import ScrapeJob
from servekit.inventory import load_fleet_and_plan
from servekit.monitoring.metrics import KNOWN_METRICS, metric_names
from servekit.placement import FleetPlan

INVENTORY = """
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, Monitoring, SecretRef, Serve, SshHost

fleet = Fleet(
    name="bench-range",
    machines=[
        SshHost(name="gpu1", address="127.0.0.1", gpu=Gpu(model="A100-80GB")),
        SshHost(name="mon", address="127.0.0.3"),
    ],
    serve=[Serve(model="qwen2.5-7b-instruct", engine="vllm", port={port}, hosts=["gpu1"])],
    engine_api_key=SecretRef(file={key!r}),
    monitoring=Monitoring(host="mon", port={prometheus_port}, scrape_interval="1s"),
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


def test_the_link_opens_the_run_in_prometheus_graph_panels() -> None:
    span = TimeRange(start_unix=1_700_000_000.4, end_unix=1_700_000_095.2, start="", end="")
    link = prometheus_link("http://127.0.0.1:19090/", "f", span)
    parts = urlsplit(link.graph_url)
    assert (parts.netloc, parts.path) == ("127.0.0.1:19090", "/graph")
    params = parse_qs(parts.query)
    assert link.queries == run_queries("f") and len(link.queries) == 5
    for number, expr in enumerate(link.queries):
        assert params[f"g{number}.expr"] == [expr]
        assert params[f"g{number}.tab"] == ["0"]  # a graph, not a table
        # 1_699_999_940 to 1_700_000_156: the run and a minute either side, whole seconds
        assert params[f"g{number}.range_input"] == ["3m36s"]
        end = dt.datetime.fromtimestamp(1_700_000_156, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert params[f"g{number}.end_input"] == [end] == params[f"g{number}.moment_input"]
        assert params[f"g{number}.step_input"] == ["1"] and link.step_s == 1
        assert metric_names(expr) <= KNOWN_METRICS, expr


def test_a_url_benchmark_records_its_time_range_and_no_link(
    start_vllm: Callable[..., Server],
) -> None:
    server = start_vllm(ttft="0.01", tokens_per_s="200")
    before = time.time()
    result = bench(server.url, input_len=8, output_len=5, num_prompts=3)
    after = time.time()
    span = result.time_range
    assert span is not None and result.prometheus is None
    assert before <= span.start_unix <= span.end_unix <= after
    for run in result.runs:
        for record in run.requests:
            sent = run.started_at_unix + record.start_s
            assert span.start_unix <= sent and sent + (record.e2el_s or 0) <= span.end_unix
    assert dt.datetime.fromisoformat(span.start).timestamp() == pytest.approx(
        span.start_unix, abs=1e-3
    )


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[FleetPlan, int], str]]:
    """Start Debian's Prometheus with servekit's rendered files, scraping the engine port."""
    started: list[subprocess.Popen[bytes]] = []

    def start(plan: FleetPlan, engine_port: int) -> str:
        mon = plan.hosts["mon"]
        assert mon.monitoring is not None
        engines = [job for job in mon.monitoring.jobs if job.job == "vllm"]
        assert engines[0].targets[0].address == f"127.0.0.1:{engine_port}"
        jobs: list[ScrapeJob] = engines  # the engine only: no exporters run here
        plan_mon = mon.model_copy(
            update={"monitoring": mon.monitoring.model_copy(update={"jobs": jobs})}
        )
        started.append(start_prometheus(plan_mon, tmp_path))
        return f"http://127.0.0.1:{mon.monitoring.port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def _query(url: str, path: str, **params: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{url}/api/v1/{path}", params=params, timeout=5)
    assert answer.status_code == 200, answer.text
    result: list[dict[str, object]] = answer.json()["data"]["result"]
    return result


def _wait_scraped(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _query(url, "query", query='up{job="vllm"} == 1'):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("Prometheus never scraped the engine")


def test_a_fleet_benchmark_links_its_range_in_prometheus(
    start_vllm: Callable[..., Server],
    prometheus: Callable[[FleetPlan, int], str],
    tmp_path: Path,
) -> None:
    key = tmp_path / "engine.key"
    key.write_text("range-key\n")
    key.chmod(0o600)
    port, prometheus_port = free_port(), free_port()
    inventory = tmp_path / "fleet.py"
    inventory.write_text(INVENTORY.format(port=port, key=str(key), prometheus_port=prometheus_port))
    _fleet, plan = load_fleet_and_plan(inventory)
    url = prometheus(plan, port)
    assert fleet_prometheus(plan, None) == url  # the monitoring host's loopback, tunnelled here
    name = from_fleet(plan, None).model  # the served name the deploy gives vLLM
    assert name is not None
    start_vllm("--served-model-name", name, "--api-key", "range-key",
               port=port, ttft="0.01", tokens_per_s="40")  # fmt: skip
    _wait_scraped(url)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        ["bench", str(inventory), "--input-len", "8", "--output-len", "40",
         "--num-prompts", "3", "--json", str(out), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = BenchResult.read(out)
    assert report.time_range is not None and report.prometheus is not None
    span, link = report.time_range, report.prometheus
    assert span.end_unix - span.start_unix > 2.5  # 3 requests × 40 tokens at 40 tokens/s
    assert link.url == url and "in Prometheus: " + url + "/graph?" in result.output
    time.sleep(2.5)  # two more scrapes after the run
    tokens_per_s = link.queries[0]
    assert "generation_tokens_total" in tokens_per_s
    series = _query(
        url,
        "query_range",
        query=tokens_per_s,
        start=f"{span.start_unix - MARGIN_S:.3f}",
        end=f"{span.end_unix + MARGIN_S:.3f}",
        step=f"{link.step_s:g}",
    )
    assert len(series) == 1 and series[0]["metric"]["host"] == "gpu1"  # type: ignore[index]
    values = [float(v[1]) for v in series[0]["values"]]  # type: ignore[index]
    assert max(values) > 1.0, values  # the run's tokens, seen through the link's own query
