"""`servekit bench compare`: several results side by side, as a table and a PNG chart.

The chart has three panels against concurrency: output tokens/s, p99 TTFT and p99 TPOT, one line
per result file. The plotted numbers are also stored in the PNG itself (a `servekit-series` text
chunk, JSON), so a chart can be checked or re-plotted without the JSON files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from servekit.bench.schema import BenchResult

PANELS = (
    ("output_throughput", "output tokens/s"),
    ("ttft_p99_ms", "p99 TTFT (ms)"),
    ("tpot_p99_ms", "p99 TPOT (ms)"),
)
PNG_KEY = "servekit-series"


class ChartError(RuntimeError):
    """The chart cannot be drawn (matplotlib missing)."""


@dataclass(frozen=True)
class Point:
    concurrency: int
    output_throughput: float
    request_throughput: float
    ttft_p99_ms: float
    tpot_p99_ms: float
    e2el_p99_ms: float
    timed_out_pct: float


def series(result: BenchResult) -> list[Point]:
    """One point per level: closed loops at their user count, open loops at peak concurrency."""
    points = []
    for run in result.runs:
        s = run.summary
        x = run.concurrency if run.request_rate is None and run.concurrency else s.peak_concurrency
        points.append(
            Point(
                concurrency=x,
                output_throughput=s.output_throughput,
                request_throughput=s.request_throughput,
                ttft_p99_ms=s.ttft_ms.p99,
                tpot_p99_ms=s.tpot_ms.p99,
                e2el_p99_ms=s.e2el_ms.p99,
                timed_out_pct=s.timed_out_pct,
            )
        )
    return sorted(points, key=lambda p: p.concurrency)


def labels(results: list[BenchResult]) -> list[str]:
    """Each result's label, made unique with a counter where two are the same."""
    out: list[str] = []
    for result in results:
        label = result.target.label
        if label in out:
            label = f"{label} ({sum(1 for x in out if x.startswith(label)) + 1})"
        out.append(label)
    return out


def compare_table(results: list[BenchResult]) -> Table:
    """Rows: concurrency; for each result, output tok/s, p99 TTFT and p99 TPOT."""
    names = labels(results)
    table = Table(title="servekit bench compare", title_justify="left")
    table.add_column("users", justify="right")
    for name in names:
        for metric in ("tok/s", "TTFT p99", "TPOT p99", "timeouts"):
            table.add_column(f"{name}\n{metric}", justify="right")
    by_result = [{p.concurrency: p for p in series(r)} for r in results]
    for x in sorted({c for points in by_result for c in points}):
        row = [str(x)]
        for points in by_result:
            p = points.get(x)
            if p is None:
                row += ["-"] * 4
            else:
                row += [
                    f"{p.output_throughput:,.0f}",
                    f"{p.ttft_p99_ms:,.0f} ms",
                    f"{p.tpot_p99_ms:,.1f} ms",
                    f"{p.timed_out_pct:.0f} %",
                ]
        table.add_row(*row)
    return table


def chart_data(results: list[BenchResult]) -> dict[str, dict[str, list[float]]]:
    """What the chart plots: {label: {"concurrency": [...], metric: [...], ...}}."""
    data: dict[str, dict[str, list[float]]] = {}
    for name, result in zip(labels(results), results, strict=True):
        points = series(result)
        entry: dict[str, list[float]] = {"concurrency": [float(p.concurrency) for p in points]}
        for key, _ in PANELS:
            entry[key] = [round(float(getattr(p, key)), 3) for p in points]
        data[name] = entry
    return data


def write_chart(results: list[BenchResult], path: Path) -> dict[str, dict[str, list[float]]]:
    """Draw the chart to `path` (PNG) and return the plotted series."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
    except ImportError:
        raise ChartError("the chart needs matplotlib: pip install 'servekit[bench]'") from None
    data = chart_data(results)
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4.2))
    ticks = sorted({x for entry in data.values() for x in entry["concurrency"]})
    for axis, (key, title) in zip(axes, PANELS, strict=True):
        for name, entry in data.items():
            axis.plot(entry["concurrency"], entry[key], marker="o", label=name)
        axis.set_xscale("log", base=2)
        axis.xaxis.set_major_locator(FixedLocator(ticks))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("concurrent users")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        if key == "ttft_p99_ms":
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(ScalarFormatter())
        else:
            axis.set_ylim(bottom=0)
    axes[0].legend(loc="best", fontsize="small")
    models = sorted({r.target.model for r in results})
    figure.suptitle(f"servekit bench: {', '.join(models)}")
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata={PNG_KEY: json.dumps(data)})
    plt.close(figure)
    return data


def read_chart_series(path: Path) -> dict[str, dict[str, list[float]]]:
    """The series stored in a chart written by `write_chart`."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get(PNG_KEY)
    if not isinstance(text, str):
        raise ChartError(f"{path} holds no {PNG_KEY} data")
    return dict(json.loads(text))
