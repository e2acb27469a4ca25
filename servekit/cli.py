"""The `servekit` command: plan, render (and, from their modules, cloud and bench).

Every command pays for what this module and its sub-apps import at the top, `servekit --help`
included: typer and rich only. A command imports the planner, the inventory loader, the HTTP
clients or boto3 when it runs (benchmarks/cli_startup.py measures the start-up).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from servekit.bench.cli import app as bench_app
from servekit.cloud.cli import cloud_app

if TYPE_CHECKING:
    from rich.table import Table

    from servekit.hostplan import HostPlan
    from servekit.placement import FleetPlan
    from servekit.planner import ModelPlan

app = typer.Typer(
    help="Plan, deploy and benchmark LLM serving (vLLM, Ollama) on your own machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(cloud_app, name="cloud")
app.add_typer(bench_app, name="bench")
# Tables are wide: keep them readable when piped (rich assumes 80 columns off a terminal).
# No markup on stdout: every cell holds inventory values, and '[/]' in one must print as is.
out = Console(width=None if sys.stdout.isatty() else 150, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _plan_record(plan: ModelPlan, **extra: Any) -> dict[str, Any]:
    return {**plan.model_dump(mode="json"), **extra}


def _fleet_records(fleet_plan: FleetPlan) -> list[dict[str, Any]]:
    return [
        _plan_record(
            summary.plan,
            serve=summary.name,
            replicas=len(summary.replicas),
            hosts=summary.replicas,
            port=summary.port,
            served_names=summary.served_names,
            cost_usd_hour=summary.cost_usd_hour,
        )
        for summary in fleet_plan.serves
    ]


def _gpus_cell(plan: ModelPlan, indices: list[int] | None = None) -> str:
    if plan.gpus == 0:
        return "cpu"
    text = f"{plan.gpus // plan.nodes}×{plan.gpu}"
    if plan.nodes > 1:
        text += f" ×{plan.nodes} nodes"
    if indices is not None and indices != list(range(len(indices))):
        text += f" [{','.join(str(i) for i in indices)}]"
    return text


def _model_row(plan: ModelPlan) -> list[str]:
    quantization = plan.quantization or (plan.dtype if plan.dtype != "auto" else "bf16/fp16")
    if plan.engine == "ollama":
        return [
            quantization,
            f"{plan.weights_gib:.1f}",
            f"{plan.max_model_len} ctx",
            f"{plan.max_concurrency:g} parallel",
            f"{plan.decode_tokens_per_s:.0f}" if plan.decode_tokens_per_s else "-",
        ]
    return [
        quantization,
        f"{plan.weights_gib_per_gpu:.1f}",
        f"{plan.kv_cache_tokens:,} ±{plan.kv_tokens_uncertainty:.0%}"
        + (" tight" if plan.tight else ""),
        f"{plan.max_concurrency:g} @ {plan.max_model_len}",
        f"{plan.decode_tokens_per_s:.0f}",
    ]


FLEET_COLUMNS = (
    "host",
    "serves",
    "engine",
    "GPUs",
    "TP×PP",
    "quant",
    "GiB/GPU",
    "KV tokens",
    "concurrency",
    "≤tok/s",
    "port",
    "$/h",
)


def _print_fleet(fleet_plan: FleetPlan) -> None:
    from rich.table import Table

    table = Table(title=f"fleet {fleet_plan.fleet}", title_justify="left")
    for column in FLEET_COLUMNS:
        table.add_column(column, overflow="fold")
    notes: list[str] = []
    for host in fleet_plan.hosts.values():
        notes += _add_host_rows(table, host)
    out.print(table)
    for summary in fleet_plan.serves:
        notes += [
            f"{summary.name}: {note}" for note in summary.plan.notes if summary.engine == "vllm"
        ]
    _print_fleet_notes(fleet_plan, notes)


def _add_host_rows(table: Table, host: HostPlan) -> list[str]:
    """One row per vLLM instance and Ollama model of the host (or one naming its roles); the
    notes of its Ollama plans."""
    cost = host.price_usd_hour
    rows = 0
    notes: list[str] = []
    for instance in host.vllm:
        plan = instance.plan
        layout = f"{plan.tensor_parallel}×{plan.pipeline_parallel}"
        role = "" if instance.role == "server" else f" ({instance.role} {instance.node_rank})"
        table.add_row(
            host.name,
            instance.serve + role,
            "vllm",
            _gpus_cell(plan, instance.gpu_indices),
            layout,
            *_model_row(plan),
            str(instance.port) if instance.role == "server" else "-",
            f"{cost:.2f}" if cost is not None and rows == 0 else "",
        )
        rows += 1
    if host.ollama:
        for tag, plan in zip(host.ollama.models, host.ollama.plans, strict=True):
            table.add_row(
                host.name,
                tag,
                "ollama",
                _gpus_cell(plan),
                "-",
                *_model_row(plan),
                host.ollama.listen.rsplit(":", 1)[-1],
                "",
            )
            notes += [f"{host.name} {tag}: {note}" for note in plan.notes]
    if not rows and not host.ollama:
        roles = ", ".join(host.roles) or "no role"
        table.add_row(host.name, f"({roles})", *[""] * 10)
    return notes


def _print_fleet_notes(fleet_plan: FleetPlan, notes: list[str]) -> None:
    """Planner notes (each once), the firewall's rules, the gateway and the fleet's cloud cost."""
    from servekit.firewall import firewall_lines
    from servekit.gateway.haproxy import gateway_lines
    from servekit.gateway.keys import keys_summary

    for note in dict.fromkeys(notes):
        out.print(f"  note: {note}", highlight=False)
    for line in firewall_lines(fleet_plan):
        out.print(f"  {line}", highlight=False, markup=False)
    for host in fleet_plan.hosts.values():
        lines = gateway_lines(host)
        if host.gateway is not None:
            served = [route.model for route in host.gateway.routes]
            lines.append(f"  {keys_summary(host.gateway.api_keys, served)}")
        for line in lines:
            out.print(f"  {line}", highlight=False, markup=False)
    if fleet_plan.cost_usd_hour is not None:
        hourly = fleet_plan.cost_usd_hour
        out.print(f"  cloud cost: ${hourly:,.2f}/h, ${hourly * 24:,.2f}/day (on-demand list price)")


def _print_single(plan: ModelPlan) -> None:
    from rich.table import Table

    table = Table(title=f"{plan.model} on {_gpus_cell(plan)}", title_justify="left")
    table.add_column("")
    table.add_column("")
    rows = [
        ("checkpoint", plan.checkpoint),
        ("tensor x pipeline parallel", f"{plan.tensor_parallel} x {plan.pipeline_parallel}"),
        ("quantization", plan.quantization or "none"),
        ("weights", f"{plan.weights_gib:.2f} GiB ({plan.weights_gib_per_gpu:.2f} GiB per GPU)"),
        (
            "KV cache",
            f"{plan.kv_cache_gib_per_gpu:.2f} GiB per GPU, {plan.kv_bytes_per_token:,} B/token",
        ),
        (
            "KV capacity",
            f"{plan.kv_cache_tokens:,} tokens ±{plan.kv_tokens_uncertainty:.0%}"
            + (" (tight)" if plan.tight else ""),
        ),
        ("max model len", f"{plan.max_model_len:,}"),
        ("max concurrency", f"{plan.max_concurrency:g} requests at max model len"),
        ("decode ceiling", f"{plan.decode_tokens_per_s:.0f} tokens/s for one stream"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    for note in plan.notes:
        out.print(f"  note: {note}", highlight=False)


@app.command()
def plan(
    inventory: Annotated[
        Path | None, typer.Argument(help="inventory file (or use --model ...)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="catalog name, HF id or Ollama tag")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU model, e.g. A100-80GB")] = None,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs per node")] = 1,
    nodes: Annotated[int, typer.Option(min=1)] = 1,
    max_model_len: Annotated[int | None, typer.Option(min=256)] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(min=0.05, max=0.99)] = 0.92,
    dtype: Annotated[str, typer.Option(help="auto, bfloat16 or float16")] = "auto",
    kv_cache_dtype: Annotated[str, typer.Option(help="auto or fp8")] = "auto",
    quantization: Annotated[str, typer.Option(help="auto, none, fp8 or awq")] = "auto",
    tensor_parallel: Annotated[int | None, typer.Option(min=1)] = None,
    pipeline_parallel: Annotated[int | None, typer.Option(min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Will it fit? Plan an inventory's fleet, or one model on some GPUs. Offline."""
    if inventory is not None:
        _plan_inventory(inventory, as_json)
        return
    if model is None or gpu is None:
        raise fail("give an INVENTORY, or --model and --gpu (and --gpus, --nodes)", 2)
    from servekit import catalog, planner
    from servekit.catalog.hf_config import resolve_model

    try:
        gpu_info = catalog.gpu(gpu)
        model_info = resolve_model(model)
        request = planner.Request(
            max_model_len=max_model_len,
            dtype=dtype,
            quantization=quantization,
            kv_cache_dtype=kv_cache_dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel=tensor_parallel,
            pipeline_parallel=pipeline_parallel,
        )
        result = planner.plan_vllm(model_info, gpu_info, gpus, nodes, request)
    except (catalog.CatalogError, planner.PlanRefused) as error:
        raise fail(str(error)) from None
    if as_json:
        print(json.dumps([_plan_record(result)], indent=2))
    else:
        _print_single(result)


def _plan_inventory(inventory: Path, as_json: bool) -> None:
    """Print the plan of the fleet an inventory file declares (a table, or JSON)."""
    from servekit.errors import FleetError
    from servekit.inventory import load_fleet_and_plan

    try:
        _fleet, fleet_plan = load_fleet_and_plan(inventory)
    except FleetError as error:
        raise fail(str(error)) from None
    if as_json:
        print(json.dumps(_fleet_records(fleet_plan), indent=2))
    else:
        _print_fleet(fleet_plan)


@app.command()
def render(
    inventory: Annotated[Path, typer.Argument(help="inventory file")],
    outdir: Annotated[Path, typer.Argument(help="folder to write HOST/etc/... into")],
) -> None:
    """Write each host's files (configs, units, monitoring; secrets as placeholders) for review
    in git."""
    from servekit.errors import FleetError
    from servekit.inventory import load_fleet_and_plan
    from servekit.render import UnsafeOutput, review_files, write_tree

    try:
        _fleet, fleet_plan = load_fleet_and_plan(inventory)
    except FleetError as error:
        raise fail(str(error)) from None
    for name, host in fleet_plan.hosts.items():
        files, notes = review_files(host)
        for note in notes:
            err.print(f"note: {escape(name)}: {escape(note)}", highlight=False)
        try:
            written = write_tree(files, outdir / name)
        except UnsafeOutput as error:
            raise fail(str(error)) from None
        for path in written:
            out.print(str(path), highlight=False)


@app.command()
def doctor(
    inventory: Annotated[
        Path | None, typer.Argument(help="inventory file (or --local for this machine)")
    ] = None,
    host: Annotated[
        list[str] | None, typer.Option("--host", help="check only this host (repeatable)")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="check this machine (pyinfra's @local)")
    ] = False,
    fleet: Annotated[
        Path | None,
        typer.Option(help="with --local: the fleet file declaring this machine (LocalHost)"),
    ] = None,
    sudo: Annotated[
        bool, typer.Option("--sudo", help="with --local: read the facts with sudo")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check on the hosts what a deploy depends on (GPUs, driver, CUDA in the engines' sandbox,
    disk, memory, limits...): a table per host. Exits 1 when a check fails."""
    from servekit.doctor import report
    from servekit.doctor.run import Request, run
    from servekit.errors import FleetError

    if (inventory is None) == (not local):
        raise fail("give an INVENTORY, or --local (with --fleet FILE to compare with it)", 2)
    if (fleet is not None or sudo) and not local:
        raise fail("--fleet and --sudo are for --local; an inventory carries them itself", 2)
    hosts = tuple(host or ())
    request = Request(inventory=inventory, local=local, fleet=fleet, hosts=hosts, sudo=sudo)
    try:
        findings = run(request)
    except FleetError as error:
        raise fail(str(error)) from None
    if as_json:
        print(json.dumps(report.as_json(findings), indent=2))
    else:
        report.print_report(findings, out)
    if report.failed(findings):
        raise typer.Exit(1)


@app.command()
def status(
    inventory: Annotated[Path, typer.Argument(help="inventory file")],
    prometheus: Annotated[
        str | None,
        typer.Option(help="Prometheus URL (default http://127.0.0.1:<monitoring.port>: tunnel)"),
    ] = None,
    engines: Annotated[
        bool, typer.Option("--engines", help="read each engine's /metrics, not Prometheus")
    ] = False,
    once: Annotated[bool, typer.Option("--once", help="one snapshot, no live view")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one snapshot as JSON")] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="seconds between refreshes")] = 5.0,
    window: Annotated[
        str | None, typer.Option(help="rate window, e.g. 1m (default: 1m or 4 scrapes)")
    ] = None,
) -> None:
    """Every host and replica: up, req/s, TTFT, tokens/s, KV cache, GPUs, alerts (live).

    Exits 1 naming what is declared and down, 3 when Prometheus cannot be asked.
    """
    from servekit.errors import FleetError
    from servekit.inventory import load_fleet_and_plan
    from servekit.status.command import StatusOptions, run_status
    from servekit.status.declared import duration_seconds

    try:
        window_s = duration_seconds(window) if window else None
    except ValueError as error:
        raise fail(str(error), 2) from None
    try:
        _fleet, fleet_plan = load_fleet_and_plan(inventory)
    except FleetError as error:
        raise fail(str(error)) from None
    options = StatusOptions(prometheus, engines, once, as_json, interval, window_s)
    code = run_status(fleet_plan, options, out, err)
    if code:
        raise typer.Exit(code)


if __name__ == "__main__":
    app(prog_name="servekit")
