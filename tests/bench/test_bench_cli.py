"""`servekit bench` and `servekit bench compare` end to end: JSON, table, chart, inventory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from bench_helpers import MODEL, Server, free_port
from typer.testing import CliRunner

from servekit.bench.compare import PANELS, read_chart_series
from servekit.bench.schema import SCHEMA, BenchResult
from servekit.bench.target import TargetError, from_fleet
from servekit.cli import app
from servekit.inventory import load_fleet_and_plan

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_bench_json_then_compare_chart(
    start_vllm: Callable[..., Server], start_ollama: Callable[..., Server], tmp_path: Path
) -> None:
    vllm = start_vllm(ttft="0.02", tokens_per_s="400")
    ollama = start_ollama("qwen2.5:0.5b", parallel=1, ttft="0.02", tokens_per_s="200")
    common = ["sweep", "--max-users", "2", "--num-prompts", "2", "--input-len", "8",
              "--output-len", "6", "--quiet"]  # fmt: skip
    a, b = tmp_path / "vllm.json", tmp_path / "ollama.json"
    output = invoke("bench", vllm.url + "/v1", *common, "--model", MODEL, "--json", str(a))
    assert "users" in output and "TTFT p99" in output
    invoke("bench", ollama.url, *common, "--model", "qwen2.5:0.5b", "--json", str(b),
           "--label", "ollama laptop")  # fmt: skip
    raw = json.loads(a.read_text())
    assert raw["schema"] == SCHEMA
    assert [run["concurrency"] for run in raw["runs"]] == [1, 2]
    assert len(raw["runs"][1]["requests"]) == 2
    assert set(raw["runs"][0]["requests"][0]) >= {"ttft_s", "itl_s", "e2el_s", "output_tokens"}
    png = tmp_path / "chart.png"
    output = invoke("bench", "compare", str(a), str(b), "--png", str(png))
    assert "ollama laptop" in output and f"chart: {png}" in output
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = read_chart_series(png)
    vllm_label = BenchResult.read(a).target.label
    assert set(series) == {vllm_label, "ollama laptop"}
    for entry in series.values():
        assert entry["concurrency"] == [1.0, 2.0]
        assert set(entry) == {"concurrency", *(key for key, _ in PANELS)}
        assert all(v > 0 for v in entry["output_throughput"])
    # One Ollama slot: two users halve nothing but double the wait, vLLM serves both at once.
    ollama_ttft = series["ollama laptop"]["ttft_p99_ms"]
    assert ollama_ttft[1] > ollama_ttft[0] + 10


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "http://127.0.0.1:9", "fastest"])
    assert result.exit_code == 2 and "unknown scenario" in result.output
    result = runner.invoke(app, ["bench", "http://127.0.0.1:9", "--slo", "speed=1"])
    assert result.exit_code == 2 and "bad SLO" in result.output
    result = runner.invoke(app, ["bench", "http://127.0.0.1:9", "--model", "m", "-q"])
    assert result.exit_code == 1 and "cannot reach" in result.output


INVENTORY = """
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, SecretRef, Serve, SshHost

fleet = Fleet(
    name="bench-test",
    machines=[SshHost(name="gpu1", address="127.0.0.1", gpu=Gpu(model="A100-80GB"))],
    serve=[Serve(model="qwen2.5-7b-instruct", engine="vllm", port={port})],
    engine_api_key=SecretRef(file={key!r}),
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


def test_inventory_endpoint_key_and_bandwidth_ceiling(
    start_vllm: Callable[..., Server], tmp_path: Path
) -> None:
    key = tmp_path / "engine.key"
    key.write_text("inventory-key\n")
    key.chmod(0o600)
    port = free_port()
    inventory = tmp_path / "fleet.py"
    inventory.write_text(INVENTORY.format(port=port, key=str(key)))
    _fleet, plan = load_fleet_and_plan(inventory)
    resolved = from_fleet(plan, None)
    assert resolved.base_url == f"http://127.0.0.1:{port}"
    assert resolved.api_key == "inventory-key" and resolved.engine == "vllm"
    assert resolved.gpu == "A100-SXM4-80GB" and resolved.decode_ceiling
    name = resolved.model
    assert name is not None
    # The stand-in, started as the deploy would: same port, served name and key.
    start_vllm("--served-model-name", name, "--api-key", "inventory-key", port=port,
               ttft="0.01", tokens_per_s="50")  # fmt: skip
    out = tmp_path / "r.json"
    output = invoke("bench", str(inventory), "--input-len", "8", "--output-len", "21",
                    "--num-prompts", "2", "--json", str(out), "-q")  # fmt: skip
    result = BenchResult.read(out)
    assert result.target.host == "gpu1" and result.runs[0].summary.completed == 2
    assert result.ceiling is not None
    assert result.ceiling.achieved_tokens_per_s == pytest.approx(50, rel=0.2)
    assert result.ceiling.share == pytest.approx(50 / resolved.decode_ceiling, rel=0.2)
    assert "memory-bandwidth ceiling on A100-SXM4-80GB" in output


def test_inventory_errors_name_the_fix(tmp_path: Path) -> None:
    _fleet, plan = load_fleet_and_plan("inventories/prod.py")
    with pytest.raises(TargetError, match="servekit cloud apply"):
        from_fleet(plan, None)
    _fleet, plan = load_fleet_and_plan("inventories/laptop.py")
    resolved = from_fleet(plan, None)
    assert resolved.base_url == "http://127.0.0.1:11434" and resolved.engine == "ollama"
    assert resolved.decode_ceiling is None  # the planner knows no GPU there
    with pytest.raises(TargetError, match="no auto endpoint serving model 'nope'"):
        from_fleet(plan, "nope")
