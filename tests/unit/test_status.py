"""`servekit status` without servers: the exposition parser, Prometheus' histogram_quantile, a
replica's row from two scrapes, the queries' metric names, durations, the live view, and the
command's exits when Prometheus cannot be asked (test_status_live.py runs it against servers)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from standins.harness import HERE as STANDINS
from standins.harness import free_port, request, running, wait_http
from typer.testing import CliRunner

from servekit.cli import app
from servekit.monitoring.metrics import KNOWN_METRICS, VLLM_METRICS, metric_names
from servekit.status import declared
from servekit.status.declared import DeclaredEngine, duration_seconds, prometheus_duration
from servekit.status.engines import Scrape, replica_row
from servekit.status.expositions import (
    ExpositionError,
    bucket_increase,
    bucket_quantile,
    buckets,
    increase,
    parse,
)
from servekit.status.prometheus import gpu_queries, replica_queries, selector, targets_query
from servekit.status.report import FleetStatus, ReplicaStatus, TargetStatus, down_names
from servekit.status.view import render, watch

ENGINE = DeclaredEngine(host="g1", model="m", replica=0, unit="vllm-m", url="http://x:1")


def exposition(requests: float, tokens: float, ttft: dict[str, float], kv: float) -> str:
    lines = [
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{model_name="m",finished_reason="length"}} {requests}',
        'vllm:request_success_total{model_name="m",finished_reason="stop"} 1.0',
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {tokens}',
        f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {kv}',
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
        'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0',
    ]
    lines += [
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",model_name="m",le="{le}"}} {n}'
        for le, n in ttft.items()
    ]
    return "\n".join(lines) + "\n"


def test_parse_reads_labels_escapes_and_timestamps() -> None:
    (sample,) = parse('# c\n\nm:x_total{a="q\\"\\\\\\n",b="2"} 1.5e3 1700000000000\n')
    assert sample.name == "m:x_total" and sample.value == 1500.0
    assert sample.labels == {"a": 'q"\\\n', "b": "2"}
    assert parse('h_bucket{le="+Inf"} 4')[0].labels == {"le": "+Inf"}
    assert parse("up 1")[0].labels == {}
    with pytest.raises(ExpositionError):
        parse("not a sample line at all")
    with pytest.raises(ExpositionError):
        parse('m{a="unterminated} 1')


def test_bucket_quantile_is_prometheus_bucket_quantile() -> None:
    counts = {0.1: 2.0, 0.5: 6.0, 1.0: 8.0, math.inf: 10.0}
    assert bucket_quantile(0.5, counts) == pytest.approx(0.1 + 0.4 * (5 - 2) / (6 - 2))
    assert bucket_quantile(0.1, counts) == pytest.approx(0.1 * 1 / 2)  # from 0 in the first
    assert bucket_quantile(0.95, counts) == 1.0  # in +Inf: the second-highest bound
    # counts made monotonic first (3, 3, 4): the median falls in the first bucket
    assert bucket_quantile(0.5, {0.1: 3.0, 0.5: 2.0, math.inf: 4.0}) == pytest.approx(0.1 * 2 / 3)
    assert bucket_quantile(0.5, {0.5: 0.0, math.inf: 0.0}) is None  # no observations
    assert bucket_quantile(0.5, {0.5: 1.0, 1.0: 2.0}) is None  # no +Inf bucket
    assert bucket_quantile(0.5, {math.inf: 2.0}) is None  # one bucket


def test_counters_that_went_down_were_reset() -> None:
    assert increase(10, 14) == 4 and increase(10, 3) == 3 and increase(None, 3) is None
    assert bucket_increase({1.0: 5, math.inf: 9}, {1.0: 7, math.inf: 2}) == {1.0: 2, math.inf: 2}


def test_a_replica_row_from_two_scrapes() -> None:
    before = parse(exposition(10, 1000, {"0.1": 4, "0.5": 8, "+Inf": 11}, 0.25))
    after = parse(exposition(30, 1800, {"0.1": 4, "0.5": 24, "+Inf": 31}, 0.5))
    row = replica_row(
        ENGINE, Scrape(100.0, before, healthy=True), Scrape(104.0, after, healthy=True)
    )
    assert row.up and row.ready and row.reason is None
    assert row.requests_per_s == 5.0  # (30 + 1) - (10 + 1) over 4 s, every finished_reason
    assert row.tokens_per_s == 200.0
    # increases: 0 under 0.1 s, 16 under 0.5 s, 20 in all: the median is in (0.1, 0.5]
    assert row.ttft_p50_s == pytest.approx(0.1 + 0.4 * (10 / 16))
    assert row.ttft_p95_s == 0.5
    assert row.kv_cache_pct == 50.0 and row.running == 3.0 and row.waiting == 0.0
    first = replica_row(ENGINE, None, Scrape(104.0, after, healthy=False))
    assert first.requests_per_s is None and first.ttft_p50_s is None
    assert first.ready is False and first.reason == "/health does not answer 200"
    down = replica_row(ENGINE, None, Scrape(104.0, None, "cannot reach http://x:1/metrics"))
    assert not down.up and down.reason == "cannot reach http://x:1/metrics"
    assert buckets(after, "vllm:time_to_first_token_seconds")[math.inf] == 31


def test_every_query_reads_known_metric_names() -> None:
    used = set()
    for expr in [*replica_queries("f", "1m").values(), *gpu_queries("f").values()]:
        used |= metric_names(expr)
    used |= metric_names(targets_query("f"))
    assert used <= KNOWN_METRICS, sorted(used - KNOWN_METRICS)
    names = [declared.REQUESTS, declared.GENERATED_TOKENS, declared.KV_CACHE]
    names += [declared.RUNNING, declared.WAITING, declared.TTFT + "_bucket"]
    assert set(names) <= VLLM_METRICS


def test_label_values_are_quoted() -> None:
    assert selector('a"b\\c', job="vllm") == '{fleet="a\\"b\\\\c",job="vllm"}'
    assert targets_query("f") == 'up{fleet="f",job!="vllm"}'


def test_durations() -> None:
    assert duration_seconds("15s") == 15 and duration_seconds("1m30s") == 90
    assert duration_seconds("500ms") == 0.5
    for bad in ("15", "1.5m", "m", "15s "):
        with pytest.raises(ValueError):
            duration_seconds(bad)
    assert prometheus_duration(90) == "1m30s" and prometheus_duration(3600) == "1h"
    assert prometheus_duration(0.25) == "250ms" and prometheus_duration(0) == "0s"


def test_down_names_every_declared_thing_that_is_down() -> None:
    up = ReplicaStatus(host="g1", model="m", replica=0, unit="u", up=True, ready=True)
    dead = up.model_copy(update={"host": "g2", "replica": 1, "up": False, "reason": "gone"})
    loading = up.model_copy(update={"replica": 2, "ready": False})
    node = TargetStatus(job="node", host="g3", up=False, reason="scrape failed: timeout")
    assert down_names([up, dead, loading], [node]) == [
        "replica m#1 on g2 (u): gone",
        "replica m#2 on g1 (u): not ready",
        "node exporter on g3: scrape failed: timeout",
    ]


def test_the_live_view_refreshes_until_interrupted() -> None:
    row = ReplicaStatus(host="g1", model="m", replica=0, unit="u", up=True, requests_per_s=2.5)
    first = FleetStatus(fleet="f", source="engines", at=0, window_s=5, replicas=[row])
    later = first.model_copy(update={"replicas": [row.model_copy(update={"requests_per_s": 7.25})]})
    answers: list[FleetStatus | Text] = [Text("error: Prometheus went away"), later]
    calls = []

    def refresh() -> FleetStatus | Text:
        calls.append(1)
        if not answers:
            raise KeyboardInterrupt
        return answers.pop(0)

    console = Console(record=True, width=150, force_terminal=False)
    watch(console, first, refresh, every_s=0.01)
    text = console.export_text()
    assert len(calls) == 3 and "7.25" in text
    Console(record=True).print(render(first))


def test_status_without_a_reachable_prometheus_exits_3_with_the_tunnel(tmp_path: Path) -> None:
    port = free_port()
    inventory = tmp_path / "f.py"
    inventory.write_text(
        "from servekit.inventory import pyinfra_groups\n"
        "from servekit.spec import Fleet, Gpu, Monitoring, SecretRef, Serve, SshHost\n"
        "fleet = Fleet(name='f', machines=[SshHost(name='g1', address='10.0.0.1', "
        "gpu=Gpu(model='L4')), SshHost(name='mon', address='10.0.0.8')],\n"
        "    serve=[Serve(model='qwen2.5-7b-instruct')], engine_api_key=SecretRef(env='K'),\n"
        f"    monitoring=Monitoring(host='mon', port={port}))\n"
        "gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)\n"
    )
    result = CliRunner().invoke(app, ["status", str(inventory), "--once"])
    assert result.exit_code == 3, result.output
    assert f"cannot reach Prometheus at http://127.0.0.1:{port}" in result.output
    assert f"ssh -N -L {port}:127.0.0.1:{port} 10.0.0.8" in result.output
    bad = CliRunner().invoke(app, ["status", str(inventory), "--window", "soon"])
    assert bad.exit_code == 2 and "not a Prometheus duration" in bad.output


OLLAMA_FLEET = """
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, LocalHost, Serve

fleet = Fleet(
    name="lap",
    machines=[LocalHost(name="me")],
    serve=[Serve(model="llama3.1:8b", engine="ollama", port={port})],
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


def test_ollama_servers_answer_their_version_or_are_named_down(tmp_path: Path) -> None:
    port = free_port()
    inventory = tmp_path / "lap.py"
    inventory.write_text(OLLAMA_FLEET.format(port=port))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(tmp_path / "models"),
        "HOME": str(tmp_path),
    }
    argv = [sys.executable, str(STANDINS / "ollama" / "bin" / "ollama"), "serve"]
    with running(argv, env, tmp_path, "ollama"):
        wait_http(port, "/api/version")
        version = json.loads(request(port, "GET", "/api/version")[2])["version"]
        result = CliRunner().invoke(app, ["status", str(inventory), "--json"])
        assert result.exit_code == 0, result.output
        status = json.loads(result.stdout)
        assert status["ollama"] == [
            {
                "host": "me",
                "models": ["llama3.1:8b"],
                "up": True,
                "version": version,
                "reason": None,
            }
        ]
        assert status["replicas"] == [] and status["down"] == []
    result = CliRunner().invoke(app, ["status", str(inventory), "--once", "--interval", "0.5"])
    assert result.exit_code == 1, result.output
    assert "DOWN ollama on me: cannot reach http://127.0.0.1:" in result.output
