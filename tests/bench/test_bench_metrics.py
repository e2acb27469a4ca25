"""Metric definitions on hand-made timings (no server)."""

from __future__ import annotations

import random

import pytest

from servekit.bench.client import Timing
from servekit.bench.metrics import (
    analyse_sweep,
    parse_slo,
    percentile,
    stats_ms,
    summarize,
    to_record,
    tpot_s,
)
from servekit.bench.schema import RequestRecord, Slo


def record(
    index: int,
    ttft: float | None,
    itl: list[float],
    output: int,
    start: float = 0.0,
    status: str = "ok",
    prompt: int = 10,
) -> RequestRecord:
    e2el = None if ttft is None else ttft + sum(itl)
    return RequestRecord(
        index=index,
        request_id=f"r-{index}",
        status=status,  # type: ignore[arg-type]
        start_s=start,
        ttft_s=ttft,
        e2el_s=e2el,
        itl_s=itl,
        prompt_tokens=prompt,
        output_tokens=output,
    )


def test_percentile_interpolates_like_numpy() -> None:
    values = sorted(random.Random(1).random() for _ in range(37))
    # numpy.percentile(values, [50, 90, 99]) with linear interpolation, computed by hand:
    for p in (0, 50, 90, 99, 100):
        rank = (len(values) - 1) * p / 100
        low = int(rank)
        high = min(low + 1, len(values) - 1)
        expected = values[low] + (values[high] - values[low]) * (rank - low)
        assert percentile(values, p) == pytest.approx(expected)
    assert percentile([], 99) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)


def test_stats_in_milliseconds() -> None:
    stats = stats_ms([0.1, 0.2, 0.3, 0.4])
    assert stats.mean == pytest.approx(250.0)
    assert stats.median == pytest.approx(250.0)
    assert stats.max == pytest.approx(400.0)
    assert stats.p99 == pytest.approx(397.0)


def test_tpot_is_per_request_and_itl_is_pooled() -> None:
    # Request 0: 5 tokens, bundled: gaps 0, 0.4, 0, 0 (two chunks of two tokens after the first).
    a = record(0, 0.1, [0.4], output=5)
    # Request 1: 3 tokens, one chunk each, gaps 0.1, 0.1.
    b = record(1, 0.2, [0.1, 0.1], output=3, start=0.0)
    assert tpot_s(a) == pytest.approx(0.4 / 4)
    assert tpot_s(b) == pytest.approx(0.2 / 2)
    assert tpot_s(record(2, 0.1, [], output=1)) is None
    summary = summarize([a, b], duration_s=2.0, slo=Slo(), output_len=5)
    assert summary.tpot_ms.mean == pytest.approx(100.0)
    # ITL pools the three gaps: 400, 100, 100 ms, so mean ITL (200) differs from mean TPOT (100).
    assert summary.itl_ms.mean == pytest.approx(200.0)
    assert summary.ttft_ms.mean == pytest.approx(150.0)
    assert summary.e2el_ms.mean == pytest.approx((500 + 400) / 2)
    assert summary.request_throughput == pytest.approx(1.0)
    assert summary.output_throughput == pytest.approx(4.0)
    assert summary.total_token_throughput == pytest.approx(14.0)
    assert summary.short_outputs == 1


def test_failures_and_timeouts_are_counted_never_dropped() -> None:
    records = [
        record(0, 0.1, [0.1], output=2),
        record(1, None, [], output=0, status="timeout"),
        record(2, 0.1, [], output=0, status="error"),
        record(3, None, [], output=0, status="timeout"),
    ]
    summary = summarize(records, duration_s=1.0, slo=Slo(), output_len=2)
    assert (summary.completed, summary.failed, summary.timed_out) == (1, 1, 2)
    assert summary.timed_out_pct == pytest.approx(50.0)
    assert summary.failed_pct == pytest.approx(25.0)
    assert summary.total_output_tokens == 2  # failed requests add nothing


def test_goodput_counts_requests_meeting_every_slo() -> None:
    fast = record(0, 0.1, [0.01] * 9, output=10)
    slow_first = record(1, 3.0, [0.01] * 9, output=10)
    slow_decode = record(2, 0.1, [0.2] * 9, output=10)
    one_token = record(3, 0.1, [], output=1)  # TPOT counts as 0
    slo = parse_slo("ttft=2000ms,tpot=100ms")
    summary = summarize([fast, slow_first, slow_decode, one_token], 2.0, slo, output_len=10)
    assert summary.goodput == pytest.approx(1.0)
    assert summary.goodput_pct == pytest.approx(50.0)
    assert summarize([fast], 1.0, Slo(), 10).goodput is None


def test_parse_slo_units() -> None:
    assert parse_slo("ttft=2000ms,tpot=100ms") == Slo(ttft_ms=2000, tpot_ms=100)
    assert parse_slo("e2el=30s ttft:500") == Slo(e2el_ms=30000, ttft_ms=500)
    assert parse_slo(None).is_empty()
    with pytest.raises(ValueError, match="bad SLO"):
        parse_slo("latency=3s")
    with pytest.raises(ValueError, match="bad SLO value"):
        parse_slo("ttft=fast")


def test_peaks() -> None:
    records = [
        record(0, 0.1, [0.1] * 4, output=5, start=0.0),
        record(1, 0.1, [0.1] * 4, output=5, start=0.2),
        record(2, 0.1, [0.1], output=2, start=2.0),
    ]
    summary = summarize(records, 3.0, Slo(), output_len=5)
    assert summary.peak_concurrency == 2
    assert summary.peak_output_throughput == 10.0


def test_output_tokens_from_usage_else_chunks() -> None:
    timing = Timing(index=0, request_id="x", prompt_tokens=3, start=1.0)
    timing.chunk_times = [1.1, 1.2, 1.3]
    timing.usage_output_tokens = 6
    rec = to_record(timing, run_start=0.5, tokenizer=None)
    assert (rec.output_tokens, rec.output_tokens_source) == (6, "usage")
    assert rec.start_s == pytest.approx(0.5)
    assert rec.ttft_s == pytest.approx(0.1)
    assert rec.e2el_s == pytest.approx(0.3)
    assert rec.itl_s == pytest.approx([0.1, 0.1])
    timing.usage_output_tokens = None
    rec = to_record(timing, run_start=0.5, tokenizer=None)
    assert (rec.output_tokens, rec.output_tokens_source) == (3, "chunks")


def test_sweep_knee_and_break() -> None:
    def level(tokens: float, ttft_p99_s: float, timeouts: int = 0) -> object:
        recs = [record(i, ttft_p99_s, [0.01], output=2) for i in range(4)]
        recs += [record(10 + i, None, [], 0, status="timeout") for i in range(timeouts)]
        s = summarize(recs, 1.0, Slo(), 2)
        return s.model_copy(update={"output_throughput": tokens})

    levels = [
        (1, level(100, 0.1)),
        (2, level(190, 0.1)),
        (4, level(360, 0.5)),
        (8, level(380, 2.5)),
        (16, level(390, 3.0, timeouts=1)),
    ]
    analysis = analyse_sweep(levels, Slo(ttft_ms=2000))  # type: ignore[arg-type]
    assert analysis.throughput_knee == 4
    assert analysis.latency_break == 8
    assert "TTFT" in (analysis.latency_break_reason or "")
    analysis = analyse_sweep(levels, Slo())  # type: ignore[arg-type]
    assert analysis.latency_break == 16
    growing = [(1, level(100, 0.1)), (2, level(200, 0.1)), (4, level(390, 0.1))]
    analysis = analyse_sweep(growing, Slo())  # type: ignore[arg-type]
    assert analysis.throughput_knee is None and analysis.latency_break is None
