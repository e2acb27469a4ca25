"""`servekit bench`: measure an OpenAI-compatible endpoint, and compare results.

servekit bench URL|INVENTORY [single|concurrent|sweep] --model NAME [options]
servekit bench compare A.json B.json ... [--png chart.png]

Every `servekit` command loads this module (to list `bench` in its help), so it imports only
typer and rich at the top; the HTTP clients (aiohttp, httpx), the tokenizer and the chart are
imported by the commands that use them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from servekit.bench.options import Options
    from servekit.bench.prompts import HfTokenizer
    from servekit.bench.schema import BenchResult, Scenario, Slo
    from servekit.bench.target import Resolved, ServerInfo

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
    import asyncio

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


def _resolve(
    target: str,
    model: str | None,
    api_key_file: Path | None,
    via: str,
    host: str | None,
    prometheus: str | None = None,
) -> Resolved:
    """The endpoint (and, for a fleet, its Prometheus) from a URL or an inventory."""
    from servekit.bench.target import Resolved, base_url, from_fleet, read_key_file
    from servekit.errors import FleetError
    from servekit.secrets import SecretError

    path = Path(target)
    if target.endswith(".py") or path.is_file():
        from servekit.bench.timerange import fleet_prometheus
        from servekit.inventory import load_fleet_and_plan

        try:
            _fleet, plan = load_fleet_and_plan(path)
        except FleetError as error:
            raise _fail(str(error)) from None
        resolved = from_fleet(plan, model, via, host)  # type: ignore[arg-type]
        url = fleet_prometheus(plan, prometheus)
        resolved = dataclasses.replace(resolved, fleet=plan.fleet, prometheus_url=url)
    else:
        resolved = Resolved(base_url=base_url(target), model=model, api_key=None)
    if api_key_file is not None:
        try:
            key = read_key_file(api_key_file)
        except SecretError as error:
            raise _fail(str(error)) from None
        resolved = dataclasses.replace(resolved, api_key=key)
    return resolved


TargetArgument = Annotated[
    str, typer.Argument(help="endpoint URL (http://host:8000) or inventory file")
]
ScenarioArgument = Annotated[
    str | None,
    typer.Argument(
        help="single (1 user), concurrent (--users N), sweep (1, 2, 4 … --max-users); "
        "default single, or concurrent with --users, open loop with --request-rate"
    ),
]
ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="served model name")]
ApiKeyFileOption = Annotated[Path | None, typer.Option(help="file whose first line is the API key")]
UsersOption = Annotated[int | None, typer.Option(min=1, help="concurrent users (100)")]
MaxUsersOption = Annotated[int, typer.Option(min=1, help="sweep: highest concurrency")]
RequestRateOption = Annotated[
    str | None, typer.Option(help="open loop: requests/s (Poisson), or inf")
]
BurstinessOption = Annotated[
    float, typer.Option(min=0.01, help="open loop: gamma shape; 1 = Poisson, < 1 burstier")
]
MaxConcurrencyOption = Annotated[
    int | None, typer.Option(min=1, help="open loop: cap on requests in flight")
]
NumPromptsOption = Annotated[
    int | None, typer.Option(min=1, help="requests per level (default: 4 single, 2×users)")
]
DurationOption = Annotated[
    str | None, typer.Option(help="run each level this long instead (30s, 5m)")
]
TimeoutOption = Annotated[float, typer.Option(min=0.1, help="seconds per request")]
SeedOption = Annotated[int, typer.Option(help="prompt seed; change it between runs")]
InputLenOption = Annotated[int, typer.Option(min=1, help="prompt tokens")]
OutputLenOption = Annotated[int, typer.Option(min=1, help="output tokens (forced where possible)")]
SloOption = Annotated[
    str | None, typer.Option(help="goodput SLOs, e.g. ttft=2000ms,tpot=100ms,e2el=60s")
]
TokenizerOption = Annotated[
    str | None, typer.Option(help="tokenizer.json, its folder, or an HF id in the local cache")
]
EndpointOption = Annotated[
    str, typer.Option(help="auto (vLLM: completions, else chat), completions or chat")
]
JsonFileOption = Annotated[
    Path | None, typer.Option("--json", help="write every request's timings here")
]
LabelOption = Annotated[str | None, typer.Option(help="name in tables and charts")]
ViaOption = Annotated[str, typer.Option(help="inventory: auto, gateway or engine")]
HostOption = Annotated[str | None, typer.Option(help="inventory: benchmark this host's engine")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
PrometheusOption = Annotated[
    str | None,
    typer.Option(help="inventory: the fleet's Prometheus as reached here (default: its tunnel)"),
]


@app.command("run")
def run(
    target: TargetArgument,
    scenario: ScenarioArgument = None,
    model: ModelOption = None,
    api_key_file: ApiKeyFileOption = None,
    users: UsersOption = None,
    max_users: MaxUsersOption = 256,
    request_rate: RequestRateOption = None,
    burstiness: BurstinessOption = 1.0,
    max_concurrency: MaxConcurrencyOption = None,
    num_prompts: NumPromptsOption = None,
    duration: DurationOption = None,
    timeout: TimeoutOption = 300.0,
    seed: SeedOption = 0,
    input_len: InputLenOption = 512,
    output_len: OutputLenOption = 2048,
    slo: SloOption = None,
    tokenizer: TokenizerOption = None,
    endpoint: EndpointOption = "auto",
    json_file: JsonFileOption = None,
    label: LabelOption = None,
    via: ViaOption = "auto",
    host: HostOption = None,
    quiet: QuietOption = False,
    prometheus: PrometheusOption = None,
) -> None:
    """Benchmark one endpoint: TTFT, TPOT, ITL, E2E latency, throughput, goodput, timeouts."""
    from servekit.bench.options import Options
    from servekit.bench.report import print_result

    chosen, max_concurrency = _scenario(scenario, request_rate, users, max_concurrency)
    _check_choices(endpoint, via, num_prompts, duration)
    options = Options(
        scenario=chosen,
        input_len=input_len,
        output_len=output_len,
        users=users or 100,
        max_users=max_users,
        slo=_slo(slo),
        request_rate=parse_rate(request_rate),
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        num_prompts=num_prompts,
        duration_s=parse_duration(duration),
        timeout_s=timeout,
        seed=seed,
        endpoint=endpoint,
        label=label,
    )
    resolved, info, tok = _connect(target, model, api_key_file, (via, host, prometheus), tokenizer)
    result = _measure(resolved, info, options, tok, quiet)
    print_result(result, out)
    if json_file is not None:
        result.write(json_file)
        err.print(escape(f"wrote {json_file}"), highlight=False)


def _scenario(
    scenario: str | None, request_rate: str | None, users: int | None, max_concurrency: int | None
) -> tuple[Scenario, int | None]:
    """The scenario the arguments ask for, and the open loop's cap on requests in flight.

    `concurrent --users N --request-rate R` is an open loop with at most N requests in flight.
    """
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
    return chosen, max_concurrency


def _check_choices(endpoint: str, via: str, num_prompts: int | None, duration: str | None) -> None:
    """Refuse option values outside their choices (exit code 2, as for a usage error)."""
    if endpoint not in ("auto", "completions", "chat"):
        raise _fail("--endpoint is auto, completions or chat", 2)
    if via not in ("auto", "gateway", "engine"):
        raise _fail("--via is auto, gateway or engine", 2)
    if num_prompts is not None and duration is not None:
        raise _fail("give --num-prompts or --duration, not both", 2)


def _slo(text: str | None) -> Slo:
    from servekit.bench.metrics import parse_slo

    try:
        return parse_slo(text)
    except ValueError as error:
        raise _fail(str(error), 2) from None


def _served_model(resolved: Resolved, info: ServerInfo) -> str | None:
    """The model asked for, else the server's only one (None when it serves several)."""
    return resolved.model or (info.models[0] if len(info.models) == 1 else None)


def _connect(
    target: str,
    model: str | None,
    api_key_file: Path | None,
    fleet_options: tuple[str, str | None, str | None],
    tokenizer: str | None,
) -> tuple[Resolved, ServerInfo, HfTokenizer | None]:
    """Find the endpoint, ask the server what it runs, and load the tokenizer for its model.
    `fleet_options`: --via, --host and --prometheus (inventories only)."""
    from servekit.bench.prompts import TokenizerError, load_tokenizer
    from servekit.bench.target import TargetError, inspect_server, with_engine

    try:
        resolved = _resolve(target, model, api_key_file, *fleet_options)
        info = inspect_server(resolved)
        resolved = with_engine(resolved, info)
        tok = load_tokenizer(tokenizer, _served_model(resolved, info) or "")
    except (TargetError, TokenizerError) as error:
        raise _fail(str(error)) from None
    return resolved, info, tok


def _measure(
    resolved: Resolved,
    info: ServerInfo,
    options: Options,
    tok: HfTokenizer | None,
    quiet: bool,
) -> BenchResult:
    """Say what is measured (on stderr), then run every level, with a progress bar unless quiet."""
    from servekit.bench.progress import RichProgress
    from servekit.bench.runner import run_benchmark
    from servekit.bench.target import TargetError

    err.print(
        escape(
            f"servekit bench: {resolved.base_url} ({info.engine}"
            f"{' ' + info.version if info.version else ''}), "
            f"model {_served_model(resolved, info) or '?'}, "
            f"{options.scenario}, {options.input_len} in / {options.output_len} out tokens"
            + (f", tokenizer {tok.path}" if tok else "")
        ),
        highlight=False,
    )
    progress = None if quiet else RichProgress(err)
    try:
        return run_async(run_benchmark(resolved, info, options, tok, progress))
    except TargetError as error:
        raise _fail(str(error)) from None


@app.command("compare")
def compare(
    files: Annotated[list[Path], typer.Argument(help="result files from `servekit bench --json`")],
    png: Annotated[
        Path | None, typer.Option(help="chart file (default: bench-compare.png)")
    ] = Path("bench-compare.png"),
    no_chart: Annotated[bool, typer.Option("--no-chart", help="table only")] = False,
) -> None:
    """Side-by-side table and a chart (throughput and p99 latency against concurrency)."""
    from servekit.bench.compare import ChartError, compare_table, write_chart
    from servekit.bench.schema import BenchResult

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
