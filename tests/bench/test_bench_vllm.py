"""servekit bench against the stand-in vLLM server: metrics against the configured truth."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from bench_helpers import Server, bench

from servekit.bench.metrics import parse_slo
from servekit.bench.prompts import HfTokenizer
from servekit.bench.schema import BenchResult
from servekit.bench.target import TargetError

TTFT_S = 0.2
TOKENS_PER_S = 50.0  # one token every 20 ms
INTERVAL_S = 1.0 / TOKENS_PER_S
OUTPUT = 12


def server_chunk_times(log: Path) -> tuple[dict[str, float], dict[str, list[float]]]:
    """From the stand-in's log: {request id: time.time() it arrived} and {request id: [time it
    wrote token 0, 1, ...]}."""
    arrived: dict[str, float] = {}
    times: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        stamp, request_id, index, kind = line.split()
        if kind == "token":
            times[request_id].append((int(index), float(stamp)))
        elif kind == "request":
            arrived[request_id] = float(stamp)
    return arrived, {rid: [t for _, t in sorted(pairs)] for rid, pairs in times.items()}


def client_chunk_times(result: BenchResult) -> dict[str, list[float]]:
    """{request id as the server logs it: [wall time the client read each token]}."""
    out: dict[str, list[float]] = {}
    for run in result.runs:
        for r in run.requests:
            assert r.ttft_s is not None
            t = run.started_at_unix + r.start_s + r.ttft_s
            times = [t]
            for gap in r.itl_s:
                t += gap
                times.append(t)
            out[f"cmpl-{r.request_id}"] = times
    return out


def test_metrics_match_configured_timing_and_server_chunk_log(
    start_vllm: Callable[..., Server], word_tokenizer: HfTokenizer
) -> None:
    server = start_vllm(chunk_log=True, ttft=str(TTFT_S), tokens_per_s=str(TOKENS_PER_S))
    result = bench(
        server.url, word_tokenizer, scenario="concurrent", users=4, num_prompts=8,
        input_len=64, output_len=OUTPUT, endpoint="completions",
    )  # fmt: skip
    (run,) = result.runs
    s = run.summary
    assert (s.completed, s.failed, s.timed_out) == (8, 0, 0)
    assert result.target.engine == "vllm" and result.target.engine_version == "0.33.0"
    assert result.target.prefix_caching is True
    assert result.config.ignore_eos
    # Exact lengths: the tokenizer's count is what the server counted.
    assert all(r.prompt_tokens == 64 == r.server_prompt_tokens for r in run.requests)
    assert all(
        r.output_tokens == OUTPUT and r.output_tokens_source == "usage" for r in run.requests
    )
    assert s.total_output_tokens == 8 * OUTPUT and s.total_input_tokens == 8 * 64
    # Against the configured truth, with room for loopback and scheduling (a few ms).
    assert TTFT_S * 1e3 <= s.ttft_ms.mean <= TTFT_S * 1e3 + 30
    assert s.tpot_ms.mean == pytest.approx(INTERVAL_S * 1e3, abs=1.5)
    assert s.itl_ms.median == pytest.approx(INTERVAL_S * 1e3, abs=3)
    expected_e2el = TTFT_S + (OUTPUT - 1) * INTERVAL_S
    assert s.e2el_ms.mean == pytest.approx(expected_e2el * 1e3, abs=35)
    assert s.request_throughput == pytest.approx(4 / expected_e2el, rel=0.25)
    assert len(run.requests) == 8 and all(len(r.itl_s) == OUTPUT - 1 for r in run.requests)
    # Against the truth as the server sent it: every chunk read soon after it was written.
    assert server.chunk_log is not None
    arrived, sent = server_chunk_times(server.chunk_log)
    read = client_chunk_times(result)
    assert set(read) <= set(sent)
    lags = [
        got - wrote
        for rid, times in read.items()
        for got, wrote in zip(times, sent[rid], strict=True)
    ]
    assert len(lags) == 8 * OUTPUT
    # Typically well under a millisecond; the bounds leave room for a busy CI machine.
    assert statistics.median(lags) < 0.003 and statistics.mean(lags) < 0.010
    assert min(lags) > -0.010  # the server logs just after its write returns
    # TTFT against the server's own (its first write after the request arrived): a few ms apart.
    records = {f"cmpl-{r.request_id}": r for r in run.requests}
    ttft_errors = [
        records[rid].ttft_s - (sent[rid][0] - arrived[rid])  # type: ignore[operator]
        for rid in read
    ]
    assert 0 <= statistics.median(ttft_errors) < 0.010
    true_ttft = statistics.mean(sent[rid][0] - arrived[rid] for rid in read)
    assert true_ttft == pytest.approx(TTFT_S, abs=0.01)  # the stand-in kept its configured TTFT


def test_timeouts_are_counted_and_reported(start_vllm: Callable[..., Server]) -> None:
    server = start_vllm(ttft="0.05", tokens_per_s="20")  # 40 tokens take ~2 s
    result = bench(
        server.url, scenario="concurrent", users=3, num_prompts=6, input_len=8,
        output_len=40, timeout_s=0.6,
    )  # fmt: skip
    s = result.runs[0].summary
    assert (s.completed, s.timed_out, s.failed) == (0, 6, 0)
    assert s.timed_out_pct == pytest.approx(100.0)
    assert all(
        r.status == "timeout" and "0.6 s" in (r.error or "") for r in result.runs[0].requests
    )
    assert s.total_output_tokens == 0 and s.output_throughput == 0


def test_mid_stream_errors_are_reported_per_request(start_vllm: Callable[..., Server]) -> None:
    server = start_vllm(ttft="0", tokens_per_s="200", fail_after_tokens="5")
    result = bench(
        server.url, scenario="concurrent", users=2, num_prompts=4, input_len=8, output_len=20
    )
    (run,) = result.runs
    assert run.summary.failed == 4 and run.summary.completed == 0
    for r in run.requests:
        assert r.status == "error" and r.http_status == 200
        assert "after 5 chunks" in (r.error or "") and "FAIL_AFTER_TOKENS" in (r.error or "")
        assert r.ttft_s is not None and len(r.itl_s) == 4  # the tokens before the failure


def test_sweep_levels_and_analysis(start_vllm: Callable[..., Server]) -> None:
    server = start_vllm(ttft="0.02", tokens_per_s="500")
    result = bench(
        server.url, scenario="sweep", max_users=4, num_prompts=4, input_len=8, output_len=8,
        slo=parse_slo("ttft=10ms"),
    )  # fmt: skip
    assert [r.concurrency for r in result.runs] == [1, 2, 4]
    assert all(r.summary.completed == 4 for r in result.runs)
    assert result.sweep is not None
    assert result.sweep.latency_break == 1  # TTFT ≥ 20 ms misses a 10 ms SLO at once
    assert result.sweep.throughput_knee is None  # no batching limit in the stand-in: still growing
    # Each level has fresh request ids (and prompts from its own seed).
    ids = [r.request_id for run in result.runs for r in run.requests]
    assert len(ids) == len(set(ids))


def test_api_key_and_wrong_model_are_clear_errors(start_vllm: Callable[..., Server]) -> None:
    server = start_vllm("--api-key", "sekret", ttft="0", tokens_per_s="0")
    with pytest.raises(TargetError, match="API key"):
        bench(server.url, input_len=4, output_len=2, num_prompts=1)
    with pytest.raises(TargetError, match="does not serve 'other'"):
        bench(server.url, model="other", api_key="sekret", input_len=4, output_len=2)
    result = bench(server.url, api_key="sekret", input_len=4, output_len=3, num_prompts=2)
    assert result.runs[0].summary.completed == 2


def test_repeated_prompts_warn_about_prefix_cache(start_vllm: Callable[..., Server]) -> None:
    server = start_vllm(ttft="0", tokens_per_s="0")
    first = bench(server.url, input_len=4, output_len=2, num_prompts=1, seed=7)
    assert not any("prefix caching" in w for w in first.warnings)
    again = bench(server.url, input_len=4, output_len=2, num_prompts=1, seed=7)
    assert any("prefix caching on" in w and "--seed 7" in w for w in again.warnings)
    other = bench(server.url, input_len=4, output_len=2, num_prompts=1, seed=8)
    assert not any("prefix caching" in w for w in other.warnings)


def test_open_loop_rate(start_vllm: Callable[..., Server]) -> None:
    server = start_vllm(ttft="0", tokens_per_s="0")
    result = bench(
        server.url, scenario="rate", request_rate=40.0, num_prompts=20, input_len=4,
        output_len=4, seed=3,
    )  # fmt: skip
    (run,) = result.runs
    assert run.request_rate == 40.0 and run.summary.completed == 20
    starts = sorted(r.start_s for r in run.requests)
    # 20 Poisson arrivals at 40/s span about half a second (loose: a sum of 19 exponentials).
    assert 0.15 < starts[-1] - starts[0] < 1.5


def test_duration_bounds_a_closed_loop(start_vllm: Callable[..., Server]) -> None:
    server = start_vllm(ttft="0.01", tokens_per_s="200")  # ~45 ms a request
    result = bench(server.url, scenario="concurrent", users=2, duration_s=0.5, input_len=4,
                   output_len=8)  # fmt: skip
    s = result.runs[0].summary
    assert s.failed == s.timed_out == 0
    assert 10 <= s.completed <= 40  # two users, ~0.5 s, ~45 ms each
    assert all(r.start_s < 0.5 for r in result.runs[0].requests)  # nothing sent after the end
    assert 0.5 <= s.duration_s < 0.7  # the requests in flight at the deadline finished
