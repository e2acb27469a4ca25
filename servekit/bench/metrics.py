"""Run-level metrics from per-request timings, defined exactly as `vllm bench serve` defines them.

- TTFT: request sent → first streamed token; E2EL: request sent → last streamed token.
- TPOT, per request: (E2EL − TTFT) / (output tokens − 1), for requests with more than one token.
- ITL: every gap between streamed chunks, pooled over all requests.
- Request, output-token and total-token throughput: over the run's duration (first request sent →
  last one finished); failed and timed-out requests count as completing nothing.
- Goodput: requests/s meeting every SLO (a request with ≤ 1 output token has TPOT 0 here).
- Percentiles interpolate linearly between samples (numpy's default); an empty list gives 0.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

from servekit.bench.client import Timing
from servekit.bench.prompts import Tokenizer, count_tokens
from servekit.bench.schema import RequestRecord, Slo, Stats, Summary, SweepAnalysis

KNEE_GAIN = 0.10


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile of already sorted values, by linear interpolation."""
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def stats_ms(values_s: Sequence[float]) -> Stats:
    """Mean, std, median, p90, p99 and max of seconds, in milliseconds."""
    if not values_s:
        return Stats(mean=0.0, std=0.0, median=0.0, p90=0.0, p99=0.0, max=0.0)
    ordered = sorted(values_s)
    n = len(ordered)
    mean = math.fsum(ordered) / n
    var = math.fsum((v - mean) ** 2 for v in ordered) / n
    return Stats(
        mean=mean * 1e3,
        std=math.sqrt(var) * 1e3,
        median=percentile(ordered, 50) * 1e3,
        p90=percentile(ordered, 90) * 1e3,
        p99=percentile(ordered, 99) * 1e3,
        max=ordered[-1] * 1e3,
    )


def to_record(timing: Timing, run_start: float, tokenizer: Tokenizer | None) -> RequestRecord:
    """A JSON record from a raw timing (output tokens: usage, else tokenizer, else chunks)."""
    times = timing.chunk_times
    if timing.usage_output_tokens is not None:
        output_tokens, source = timing.usage_output_tokens, "usage"
    elif tokenizer is not None and timing.text is not None:
        output_tokens, source = count_tokens(tokenizer, timing.text), "tokenizer"
    else:
        output_tokens, source = len(times), "chunks"
    ttft = times[0] - timing.start if times else None
    e2el = times[-1] - timing.start if times else None
    if timing.status == "timeout" and times:
        e2el = None
    return RequestRecord(
        index=timing.index,
        request_id=timing.request_id,
        status=timing.status,
        start_s=round(timing.start - run_start, 6),
        ttft_s=None if ttft is None else round(ttft, 6),
        e2el_s=None if e2el is None else round(e2el, 6),
        itl_s=[round(b - a, 6) for a, b in itertools.pairwise(times)],
        prompt_tokens=timing.prompt_tokens,
        server_prompt_tokens=timing.usage_prompt_tokens,
        output_tokens=output_tokens,
        output_tokens_source=source,
        finish_reason=timing.finish_reason,
        http_status=timing.http_status,
        error=timing.error,
    )


def tpot_s(record: RequestRecord) -> float | None:
    """(E2EL − TTFT) / (output tokens − 1); None for one token or fewer."""
    if record.ttft_s is None or record.e2el_s is None or record.output_tokens <= 1:
        return None
    return (record.e2el_s - record.ttft_s) / (record.output_tokens - 1)


def meets_slo(record: RequestRecord, slo: Slo) -> bool:
    assert record.ttft_s is not None and record.e2el_s is not None
    if slo.ttft_ms is not None and record.ttft_s * 1e3 > slo.ttft_ms:
        return False
    if slo.tpot_ms is not None and (tpot_s(record) or 0.0) * 1e3 > slo.tpot_ms:
        return False
    return not (slo.e2el_ms is not None and record.e2el_s * 1e3 > slo.e2el_ms)


def _peaks(records: Sequence[RequestRecord]) -> tuple[float, int]:
    """Most output tokens streamed in one 1 s bucket, and most requests in flight at once."""
    buckets: Counter[int] = Counter()
    edges: list[tuple[float, int]] = []
    for r in records:
        if r.ttft_s is not None:
            t = r.start_s + r.ttft_s
            buckets[int(t)] += 1
            for gap in r.itl_s:
                t += gap
                buckets[int(t)] += 1
        end = r.start_s + (r.e2el_s if r.e2el_s is not None else (r.ttft_s or 0.0))
        edges += [(r.start_s, 1), (end, -1)]
    in_flight = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        in_flight += step
        peak = max(peak, in_flight)
    return float(max(buckets.values(), default=0)), peak


def summarize(
    records: Sequence[RequestRecord], duration_s: float, slo: Slo, output_len: int
) -> Summary:
    """The run's metrics (see the module docstring for each definition)."""
    ok = [r for r in records if r.status == "ok" and r.ttft_s is not None]
    timed_out = sum(1 for r in records if r.status == "timeout")
    failed = len(records) - len(ok) - timed_out
    total = max(len(records), 1)
    duration = max(duration_s, 1e-9)
    input_tokens = sum(
        r.server_prompt_tokens if r.server_prompt_tokens is not None else r.prompt_tokens
        for r in ok
    )
    output_tokens = sum(r.output_tokens for r in ok)
    tpots = [t for r in ok if (t := tpot_s(r)) is not None]
    itls = [gap for r in ok for gap in r.itl_s]
    good = None if slo.is_empty() else sum(1 for r in ok if meets_slo(r, slo))
    peak_tokens, peak_concurrency = _peaks(records)
    return Summary(
        completed=len(ok),
        failed=failed,
        timed_out=timed_out,
        failed_pct=100.0 * failed / total,
        timed_out_pct=100.0 * timed_out / total,
        duration_s=duration_s,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(ok) / duration,
        output_throughput=output_tokens / duration,
        total_token_throughput=(input_tokens + output_tokens) / duration,
        goodput=None if good is None else good / duration,
        goodput_pct=None if good is None else 100.0 * good / total,
        peak_output_throughput=peak_tokens,
        peak_concurrency=peak_concurrency,
        ttft_ms=stats_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot_ms=stats_ms(tpots),
        itl_ms=stats_ms(itls),
        e2el_ms=stats_ms([r.e2el_s for r in ok if r.e2el_s is not None]),
        short_outputs=sum(1 for r in ok if r.output_tokens < output_len),
        mean_output_tokens=output_tokens / len(ok) if ok else 0.0,
    )


def analyse_sweep(levels: Sequence[tuple[int, Summary]], slo: Slo) -> SweepAnalysis:
    """Knee: the level after which doubling gained < 10 % output throughput (None: still growing).
    Break: the first level with failures or timeouts, or whose p99 TTFT or p99 TPOT misses the SLO.
    """
    knee: int | None = None
    for (concurrency, summary), (_, following) in itertools.pairwise(levels):
        knee = concurrency
        if following.output_throughput < summary.output_throughput * (1 + KNEE_GAIN):
            break
    else:
        knee = None  # still growing at the highest level
    broke: int | None = None
    reason: str | None = None
    for concurrency, summary in levels:
        if summary.failed or summary.timed_out:
            lost = summary.failed_pct + summary.timed_out_pct
            broke, reason = concurrency, f"{lost:.0f} % of requests failed or timed out"
        elif slo.ttft_ms is not None and summary.ttft_ms.p99 > slo.ttft_ms:
            broke, reason = concurrency, f"p99 TTFT {summary.ttft_ms.p99:.0f} ms > {slo.ttft_ms:g}"
        elif slo.tpot_ms is not None and summary.tpot_ms.p99 > slo.tpot_ms:
            broke, reason = concurrency, f"p99 TPOT {summary.tpot_ms.p99:.0f} ms > {slo.tpot_ms:g}"
        elif slo.e2el_ms is not None and summary.e2el_ms.p99 > slo.e2el_ms:
            broke, reason = concurrency, f"p99 E2EL {summary.e2el_ms.p99:.0f} ms > {slo.e2el_ms:g}"
        if broke is not None:
            break
    return SweepAnalysis(
        throughput_knee=knee, latency_break=broke, latency_break_reason=reason, slo=slo
    )


def parse_slo(text: str | None) -> Slo:
    """`ttft=2000ms,tpot=100ms,e2el=30s` (units ms or s; ms when none) → Slo."""
    if not text:
        return Slo()
    values: dict[str, float] = {}
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        key, sep, raw = item.replace(":", "=").partition("=")
        key = key.strip().lower()
        if not sep or key not in ("ttft", "tpot", "e2el"):
            raise ValueError(f"bad SLO {item!r}: use ttft=2000ms,tpot=100ms,e2el=30s")
        raw = raw.strip().lower()
        scale = 1.0
        if raw.endswith("ms"):
            raw = raw[:-2]
        elif raw.endswith("s"):
            raw, scale = raw[:-1], 1000.0
        try:
            values[f"{key}_ms"] = float(raw) * scale
        except ValueError:
            raise ValueError(f"bad SLO value {item!r}: a number with ms or s") from None
    return Slo(**values)
