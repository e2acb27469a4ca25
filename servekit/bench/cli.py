"""`servekit bench`: measure an OpenAI-compatible endpoint, and compare results.

servekit bench URL|INVENTORY [single|concurrent|sweep] --model NAME [options]
servekit bench compare A.json B.json ... [--png chart.png]
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from typer.core import TyperGroup

from servekit.bench.client import Timing
from servekit.bench.compare import ChartError, compare_table, write_chart
from servekit.bench.metrics import parse_slo
from servekit.bench.prompts import TokenizerError, load_tokenizer
from servekit.bench.report import print_result
from servekit.bench.runner import Options, run_benchmark
from servekit.bench.schema import BenchResult, Scenario
from servekit.bench.target import (
    Resolved,
    TargetError,
    base_url,
    from_fleet,
    inspect_server,
    read_key_file,
    with_engine,
)
from servekit.errors import FleetError
from servekit.secrets import SecretError

T = TypeVar("T")

out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


class _RunByDefault(TyperGroup):
    """`servekit bench TARGET ...` means `servekit bench run TARGET ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # click or typer._click
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_RunByDefault,
    help="Benchmark an OpenAI-compatible endpoint (vLLM, Ollama's /v1, the gateway) with "
    "`vllm bench serve`'s metric definitions; compare results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where installed (a faster loop keeps the client off the critical path).

    SERVEKIT_BENCH_LOOP=asyncio forces the standard loop (benchmarks/bench_client.py compares).
    """
    if os.environ.get("SERVEKIT_BENCH_LOOP", "").lower() == "asyncio":
        return asyncio.run(coroutine)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def parse_duration(text: str | None) -> float | None:
    """`90`, `90s`, `5m`, `1h` → seconds."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r}: use seconds, or 30s, 5m, 1h")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) * scale


def parse_rate(text: str | None) -> float | None:
    if text is None:
        return None
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        rate = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: requests per second, or inf") from None
    if rate <= 0:
        raise typer.BadParameter("the request rate must be positive")
    return rate


class RichProgress:
    """A live bar per load level: requests done, tokens/s so far, timeouts and errors."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
            transient=False,
        )
        self._task: TaskID | None = None
        self._tokens = 0
        self._bad = 0
        self._started = 0.0

    def level(self, description: str, total: int | None) -> None:
        self._progress.start()
        self._tokens = self._bad = 0
        self._started = asyncio.get_running_loop().time()
        self._task = self._progress.add_task(description, total=total, status="")

    def done(self, timing: Timing) -> None:
        assert self._task is not None
        self._tokens += timing.usage_output_tokens or len(timing.chunk_times)
        self._bad += timing.status != "ok"
        elapsed = max(asyncio.get_running_loop().time() - self._started, 1e-6)
        status = f"{self._tokens / elapsed:,.0f} tok/s"
        if self._bad:
            status += f", {self._bad} failed"
        self._progress.update(self._task, advance=1, status=status)

    def end(self) -> None:
        self._progress.stop()


def _resolve(
    target: str, model: str | None, api_key_file: Path | None, via: str, host: str | None
) -> Resolved:
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        from servekit.inventory import load_fleet_and_plan

        try:
            _fleet, plan = load_fleet_and_plan(path)
        except FleetError as error:
            raise _fail(str(error)) from None
        resolved = from_fleet(plan, model, via, host)  # type: ignore[arg-type]
    else:
        resolved = Resolved(base_url=base_url(target), model=model, api_key=None)
    if api_key_file is not None:
        try:
            key = read_key_file(api_key_file)
        except SecretError as error:
            raise _fail(str(error)) from None
        resolved = dataclasses.replace(resolved, api_key=key)
    return resolved


@app.command("run")
def run(
    target: Annotated[
        str, typer.Argument(help="endpoint URL (http://host:8000) or inventory file")
    ],
    scenario: Annotated[
        str | None,
        typer.Argument(
            help="single (1 user), concurrent (--users N), sweep (1, 2, 4 … --max-users); "
            "default single, or concurrent with --users, open loop with --request-rate"
        ),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="served model name")] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="file whose first line is the API key")
    ] = None,
    users: Annotated[int | None, typer.Option(min=1, help="concurrent users (100)")] = None,
    max_users: Annotated[int, typer.Option(min=1, help="sweep: highest concurrency")] = 256,
    request_rate: Annotated[
        str | None, typer.Option(help="open loop: requests/s (Poisson), or inf")
    ] = None,
    burstiness: Annotated[
        float, typer.Option(min=0.01, help="open loop: gamma shape; 1 = Poisson, < 1 burstier")
    ] = 1.0,
    max_concurrency: Annotated[
        int | None, typer.Option(min=1, help="open loop: cap on requests in flight")
    ] = None,
    num_prompts: Annotated[
        int | None, typer.Option(min=1, help="requests per level (default: 4 single, 2×users)")
    ] = None,
    duration: Annotated[
        str | None, typer.Option(help="run each level this long instead (30s, 5m)")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per request")] = 300.0,
    seed: Annotated[int, typer.Option(help="prompt seed; change it between runs")] = 0,
    input_len: Annotated[int, typer.Option(min=1, help="prompt tokens")] = 512,
    output_len: Annotated[
        int, typer.Option(min=1, help="output tokens (forced where possible)")
    ] = 2048,
    slo: Annotated[
        str | None, typer.Option(help="goodput SLOs, e.g. ttft=2000ms,tpot=100ms,e2el=60s")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="tokenizer.json, its folder, or an HF id in the local cache")
    ] = None,
    endpoint: Annotated[
        str, typer.Option(help="auto (vLLM: completions, else chat), completions or chat")
    ] = "auto",
    json_file: Annotated[
        Path | None, typer.Option("--json", help="write every request's timings here")
    ] = None,
    label: Annotated[str | None, typer.Option(help="name in tables and charts")] = None,
    via: Annotated[str, typer.Option(help="inventory: auto, gateway or engine")] = "auto",
    host: Annotated[
        str | None, typer.Option(help="inventory: benchmark this host's engine")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Benchmark one endpoint: TTFT, TPOT, ITL, E2E latency, throughput, goodput, timeouts."""
    chosen: Scenario
    if scenario is None:
        chosen = "rate" if request_rate else "concurrent" if users else "single"
    elif scenario in ("single", "concurrent", "sweep"):
        chosen = scenario  # type: ignore[assignment]
    else:
        raise _fail(f"unknown scenario {scenario!r}: single, concurrent or sweep", 2)
    if request_rate is not None and chosen != "rate":
        if chosen == "concurrent" and max_concurrency is None:
            max_concurrency = users
        elif chosen != "concurrent":
            raise _fail("--request-rate is an open loop: use it without single/sweep", 2)
        chosen = "rate"
    if endpoint not in ("auto", "completions", "chat"):
        raise _fail("--endpoint is auto, completions or chat", 2)
    if via not in ("auto", "gateway", "engine"):
        raise _fail("--via is auto, gateway or engine", 2)
    if num_prompts is not None and duration is not None:
        raise _fail("give --num-prompts or --duration, not both", 2)
    try:
        slo_value = parse_slo(slo)
    except ValueError as error:
        raise _fail(str(error), 2) from None
    options = Options(
        scenario=chosen,
        input_len=input_len,
        output_len=output_len,
        users=users or 100,
        max_users=max_users,
        request_rate=parse_rate(request_rate),
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        num_prompts=num_prompts,
        duration_s=parse_duration(duration),
        timeout_s=timeout,
        seed=seed,
        slo=slo_value,
        endpoint=endpoint,
        label=label,
    )
    try:
        resolved = _resolve(target, model, api_key_file, via, host)
        info = inspect_server(resolved)
        resolved = with_engine(resolved, info)
        model_name = resolved.model or (info.models[0] if len(info.models) == 1 else None)
        tok = load_tokenizer(tokenizer, model_name or "")
    except (TargetError, TokenizerError) as error:
        raise _fail(str(error)) from None
    err.print(
        escape(
            f"servekit bench: {resolved.base_url} ({info.engine}"
            f"{' ' + info.version if info.version else ''}), model {model_name or '?'}, "
            f"{chosen}, {input_len} in / {output_len} out tokens"
            + (f", tokenizer {tok.path}" if tok else "")
        ),
        highlight=False,
    )
    progress = None if quiet else RichProgress(err)
    try:
        result = run_async(run_benchmark(resolved, info, options, tok, progress))
    except TargetError as error:
        raise _fail(str(error)) from None
    print_result(result, out)
    if json_file is not None:
        result.write(json_file)
        err.print(escape(f"wrote {json_file}"), highlight=False)


@app.command("compare")
def compare(
    files: Annotated[list[Path], typer.Argument(help="result files from `servekit bench --json`")],
    png: Annotated[
        Path | None, typer.Option(help="chart file (default: bench-compare.png)")
    ] = Path("bench-compare.png"),
    no_chart: Annotated[bool, typer.Option("--no-chart", help="table only")] = False,
) -> None:
    """Side-by-side table and a chart (throughput and p99 latency against concurrency)."""
    results = []
    for path in files:
        try:
            results.append(BenchResult.read(path))
        except (OSError, ValueError) as error:
            raise _fail(f"{path}: {error}") from None
    out.print(compare_table(results))
    if not no_chart and png is not None:
        try:
            write_chart(results, png)
        except ChartError as error:
            raise _fail(str(error)) from None
        out.print(escape(f"chart: {png}"), highlight=False)
