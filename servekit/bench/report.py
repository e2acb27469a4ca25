"""Print a benchmark result: one row per load level, the details of a single level, warnings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from servekit.bench.schema import BenchResult, Run, Summary


def _users(count: int | None) -> str:
    return f"{count} user" + ("" if count == 1 else "s")


def _level(run: Run) -> str:
    if run.request_rate is not None:
        cap = f" ≤{run.concurrency}" if run.concurrency else ""
        return f"{run.request_rate:g}/s{cap}"
    return str(run.concurrency)


def levels_table(result: BenchResult, title: str | None = None) -> Table:
    """req/s, tokens/s and latency percentiles for each level."""
    target = result.target
    table = Table(
        title=title or f"{target.label}: {target.model} ({result.config.scenario})",
        title_justify="left",
    )
    columns = [
        "users" if result.config.scenario != "rate" else "rate",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "ITL p99",
        "E2EL p99",
        "timeouts",
        "errors",
    ]
    if not result.config.slo.is_empty():
        columns.insert(3, "goodput")
    for column in columns:
        table.add_column(column, justify="right")
    for run in result.runs:
        s = run.summary
        row = [
            _level(run),
            f"{s.request_throughput:.2f}",
            f"{s.output_throughput:,.0f}",
            f"{s.ttft_ms.median:,.0f} ms",
            f"{s.ttft_ms.p99:,.0f} ms",
            f"{s.tpot_ms.median:,.1f} ms",
            f"{s.tpot_ms.p99:,.1f} ms",
            f"{s.itl_ms.p99:,.1f} ms",
            f"{s.e2el_ms.p99 / 1000:,.1f} s",
            f"{s.timed_out_pct:.0f} %" if s.timed_out else "0",
            f"{s.failed_pct:.0f} %" if s.failed else "0",
        ]
        if not result.config.slo.is_empty():
            row.insert(3, f"{s.goodput or 0:.2f}/s ({s.goodput_pct or 0:.0f} %)")
        table.add_row(*row)
    return table


def detail_table(summary: Summary) -> Table:
    """Every metric of one level, like `vllm bench serve`'s closing report."""
    table = Table(show_header=True, title_justify="left")
    table.add_column("")
    for column in ("mean", "median", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    for name, stats in (
        ("TTFT (ms)", summary.ttft_ms),
        ("TPOT (ms)", summary.tpot_ms),
        ("ITL (ms)", summary.itl_ms),
        ("E2E latency (ms)", summary.e2el_ms),
    ):
        table.add_row(
            name,
            *(f"{v:,.2f}" for v in (stats.mean, stats.median, stats.p90, stats.p99, stats.max)),
        )
    return table


def print_result(result: BenchResult, console: Console) -> None:
    console.print(levels_table(result))
    if len(result.runs) == 1:
        s = result.runs[0].summary
        console.print(detail_table(s))
        console.print(
            f"  {s.completed} completed, {s.failed} failed ({s.failed_pct:.1f} %), "
            f"{s.timed_out} timed out ({s.timed_out_pct:.1f} %) in {s.duration_s:.1f} s; "
            f"{s.total_input_tokens:,} input and {s.total_output_tokens:,} output tokens; "
            f"total {s.total_token_throughput:,.0f} tok/s, peak output "
            f"{s.peak_output_throughput:,.0f} tok/s, peak concurrency {s.peak_concurrency}",
            highlight=False,
        )
    failures = [r for run in result.runs for r in run.requests if r.status == "error"]
    for record in failures[:5]:
        console.print(f"  error: request {record.request_id}: {record.error}", highlight=False)
    if len(failures) > 5:
        console.print(f"  ... and {len(failures) - 5} more errors (see --json)", highlight=False)
    if result.sweep is not None:
        sweep = result.sweep
        top = result.runs[-1].concurrency
        if sweep.throughput_knee is None:
            line = f"  throughput still grows at {_users(top)} (the highest level)"
        else:
            line = (
                f"  throughput stops growing (< +10 % per doubling) after "
                f"{_users(sweep.throughput_knee)}"
            )
        if sweep.latency_break is not None:
            line += (
                f"; latency breaks at {_users(sweep.latency_break)} ({sweep.latency_break_reason})"
            )
        else:
            line += "; latency held the SLO at every level"
        console.print(line, highlight=False)
    if result.ceiling is not None:
        c = result.ceiling
        console.print(
            f"  single-stream decode {c.achieved_tokens_per_s:.0f} tok/s = {c.share:.0%} of the "
            f"{c.ceiling_tokens_per_s:.0f} tok/s memory-bandwidth ceiling on {c.gpu}",
            highlight=False,
        )
    for warning in result.warnings:
        console.print(f"  [yellow]warning:[/] {warning}", highlight=False)
    print_time_range(result, console)


def print_time_range(result: BenchResult, console: Console) -> None:
    """When the load ran, and where to see it in the fleet's Prometheus."""
    if result.time_range is not None:
        span = result.time_range
        console.print(f"  load ran {span.start} to {span.end}", highlight=False, markup=False)
    if result.prometheus is not None:
        console.print(
            f"  in Prometheus: {result.prometheus.graph_url}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
