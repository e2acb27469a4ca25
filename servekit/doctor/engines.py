"""After a deploy: each engine answers `/health`, serves the planned model, and vLLM's own
startup numbers (KV cache tokens, maximum concurrency, model loading GiB) side by side with the
plan's. `across` saves them per fleet (`plan_vs_actual_path`), in the record format of
tests/data/vllm_startup_logs.toml, so users and the planner see how far the plan was.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from pyinfra.api.host import Host

from servekit.cloudstate.store import state_dir
from servekit.doctor.result import Check, HostFindings
from servekit.facts import doctor_engines as facts
from servekit.facts.doctor_network import UnitActive
from servekit.hostplan import HostPlan, VllmInstance
from servekit.operations.vllm_work import host_work
from servekit.vllm_layout import LAYOUT

GROUP = "engines"
FORMAT_VERSION = 1
WEIGHTS_TOLERANCE = 0.10
"""servekit's bound for "Model loading took" vs the plan's weights per GPU: the loaded figure
also holds buffers the checkpoint size does not (the KV bound is the plan's own uncertainty)."""

# vLLM's startup lines (vllm/v1/core/kv_cache_utils.py: `"GPU KV cache size: %s tokens"` with
# f"{num_tokens:,}", `"Maximum concurrency for %s tokens per request: %.2fx"` with the max model
# length as f"{n:,}"; vllm/v1/worker/gpu_model_runner.py: `"Model loading took %s GiB and %.6f
# seconds"`, "%.4f GiB" in older releases, "GiB memory and" in the newest; github.com/
# vllm-project/vllm). Some builds log the first two in one line: each pattern is searched.
KV_TOKENS = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
LOADING = re.compile(r"Model loading took ([\d.]+) GiB")
# vllm/v1/worker/gpu_worker.py: "Available KV cache memory: %s GiB" (once per rank; "%.2f GiB"
# in older releases); the engine sizes the cache by the smallest rank.
KV_MEMORY = re.compile(r"Available KV cache memory: ([\d.]+) GiB")


class Startup(TypedDict):
    kv_cache_tokens: int | None
    max_model_len: int | None
    max_concurrency: float | None
    weights_gib: float | None
    kv_cache_gib: float | None


def parse_startup(lines: list[str]) -> Startup:
    """The last value of each number (the current run); of the figures each tensor-parallel
    rank logs, the largest weights and the smallest KV memory."""
    found: Startup = {
        "kv_cache_tokens": None,
        "max_model_len": None,
        "max_concurrency": None,
        "weights_gib": None,
        "kv_cache_gib": None,
    }
    for line in lines:
        if match := KV_TOKENS.search(line):
            found["kv_cache_tokens"] = int(match.group(1).replace(",", ""))
        if match := CONCURRENCY.search(line):
            found["max_model_len"] = int(match.group(1).replace(",", ""))
            found["max_concurrency"] = float(match.group(2))
        if match := LOADING.search(line):
            loaded = float(match.group(1))
            found["weights_gib"] = max(loaded, found["weights_gib"] or 0.0)
        if match := KV_MEMORY.search(line):
            memory = float(match.group(1))
            found["kv_cache_gib"] = min(memory, found["kv_cache_gib"] or memory)
    return found


def _side_by_side(
    host: str, name: str, planned: float, actual: float | None, tolerance: float, unit: str
) -> Check:
    expected = f"plan {planned:,.2f}{unit} (±{tolerance:.0%})"
    if actual is None:
        fix = "vLLM did not log it this boot: see `journalctl -u <unit> -b`"
        return Check(host, name, expected, "not in the journal", "warn", fix)
    error = (actual - planned) / planned if planned else 0.0
    found = f"vLLM {actual:,.2f}{unit} ({error:+.1%})"
    if abs(error) <= tolerance:
        return Check(host, name, expected, found, "ok")
    fix = (
        "the plan was off: the record in plan-vs-actual.json shows by how much (the planner "
        "issue calibrates on it); size the load by vLLM's number"
        if actual < planned
        else "vLLM has more room than planned: the plan-vs-actual.json record shows how much"
    )
    return Check(host, name, expected, found, "warn", fix)


def startup_checks(host: str, instance: VllmInstance, startup: Startup) -> list[Check]:
    """The plan's numbers next to vLLM's; the KV lines only where the API server runs."""
    plan = instance.plan
    label = instance.unit
    rows = []
    if instance.role == "server":
        rows.append(
            _side_by_side(
                host,
                f"KV cache tokens {label}",
                plan.kv_cache_tokens,
                startup["kv_cache_tokens"],
                plan.kv_tokens_uncertainty,
                "",
            )
        )
        rows.append(
            _side_by_side(
                host,
                f"max concurrency {label} @ {plan.max_model_len:,}",
                plan.max_concurrency,
                startup["max_concurrency"],
                plan.kv_tokens_uncertainty,
                "x",
            )
        )
    rows.append(
        _side_by_side(
            host,
            f"weights GiB/GPU {label}",
            plan.weights_gib_per_gpu,
            startup["weights_gib"],
            WEIGHTS_TOLERANCE,
            " GiB",
        )
    )
    return rows


def answer_checks(host: str, instance: VllmInstance, answers: Mapping[str, Any]) -> list[Check]:
    """`/health` answers 200 and `/v1/models` lists every served name of the plan."""
    logs = f"`journalctl -u {instance.unit} -b` on {host}"
    health = answers.get("health")
    found = str(health) if health is not None else f"no answer ({answers.get('health_error')})"
    rows = [
        Check(host, f"health {instance.unit}", "200", found, "ok")
        if health == 200
        else Check(host, f"health {instance.unit}", "200", found, "fail", f"see {logs}")
    ]
    want = ", ".join(instance.served_names)
    name = f"serves {instance.unit}"
    status, listed = answers.get("models_status"), list(answers.get("models") or [])
    if answers.get("key") == "unreadable":
        found = f"not asked: the engine key in {LAYOUT.env_file(instance)} needs root"
        return [*rows, Check(host, name, want, found, "skip")]
    if status == 401:
        fix = "the engine refused its own key: run deploys/vllm.py to rewrite the unit's .env"
        return [*rows, Check(host, name, want, "401 Unauthorized", "fail", fix)]
    if status != 200:
        found = f"/v1/models answered {status or answers.get('models_error') or 'nothing'}"
        return [*rows, Check(host, name, want, found, "fail", f"see {logs}")]
    missing = [n for n in instance.served_names if n not in listed]
    if missing:
        fix = f"the engine serves another model: run deploys/vllm.py (then see {logs})"
        return [*rows, Check(host, name, want, ", ".join(listed) or "none", "fail", fix)]
    return [*rows, Check(host, name, want, ", ".join(listed), "ok")]


def record(plan: HostPlan, instance: VllmInstance, startup: Startup) -> dict[str, Any]:
    """One plan-vs-actual record, with the fields of vllm_startup_logs.toml's records."""
    model = instance.plan
    return {
        "id": f"{plan.fleet}-{plan.name}-{instance.unit}",
        "source": f"servekit doctor on {plan.name} ({instance.unit})",
        "model": model.model,
        "checkpoint": model.checkpoint,
        "gpu": model.gpu,
        "gpus": model.gpus,
        "tensor_parallel": model.tensor_parallel,
        "pipeline_parallel": model.pipeline_parallel,
        "max_model_len": model.max_model_len,
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "quantization": model.quantization or "none",
        "kv_cache_dtype": model.kv_cache_dtype,
        "engine": "v1",
        "vllm_version": plan.versions.vllm,
        "profile_tokens": "unknown",
        "weights_gib": startup["weights_gib"],
        "kv_cache_gib": startup["kv_cache_gib"],
        "kv_cache_tokens": startup["kv_cache_tokens"],
        "max_concurrency": startup["max_concurrency"],
        "planned": {
            "weights_gib": model.weights_gib_per_gpu,
            "kv_cache_tokens": model.kv_cache_tokens,
            "max_concurrency": model.max_concurrency,
        },
        "in_accuracy_test": startup["kv_cache_tokens"] is not None,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def gather(host: Host, plan: HostPlan, findings: HostFindings) -> None:
    """Each vLLM process on this host: answers (API servers), startup numbers and its record."""
    work = host_work(plan) if plan.vllm else None
    records = []
    for instance in plan.vllm:
        if instance.role == "ray-worker":
            continue
        if not host.get_fact(UnitActive, unit=f"{instance.unit}.service"):
            found = "not running (before a deploy, or stopped)"
            findings.checks.append(
                Check(plan.name, f"engine {instance.unit}", "active", found, "skip")
            )
            continue
        if instance.role == "server" and work is not None:
            health = work.health_url(instance)
            spec = {
                "health_url": health,
                "models_url": health.removesuffix("/health") + "/v1/models",
                "env_file": LAYOUT.env_file(instance),
            }
            answers = host.get_fact(facts.EngineAnswers, spec=json.dumps(spec), _sudo=plan.sudo)
            findings.checks += answer_checks(plan.name, instance, answers)
        lines = host.get_fact(facts.StartupLines, unit=f"{instance.unit}.service", _sudo=plan.sudo)
        startup = parse_startup(lines)
        findings.checks += startup_checks(plan.name, instance, startup)
        if instance.role == "server":
            records.append(record(plan, instance, startup))
    findings.facts[GROUP] = {"records": records}


def plan_vs_actual_path(fleet: str) -> Path:
    """Next to the fleet's cloud state (`$SERVEKIT_STATE_DIR`, else ./cloud)."""
    return state_dir() / f"{fleet}.plan-vs-actual.json"


def save(fleet: str, records: list[dict[str, Any]]) -> Path:
    """Merge `records` (by id) into the fleet's file, atomically; 0644: no secrets in it."""
    path = plan_vs_actual_path(fleet)
    kept: dict[str, dict[str, Any]] = {}
    if path.is_file():
        kept = {r["id"]: r for r in json.loads(path.read_text()).get("log", [])}
    kept |= {r["id"]: r for r in records}
    document = {"format_version": FORMAT_VERSION, "fleet": fleet, "log": list(kept.values())}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    return path


def across(plans: Mapping[str, HostPlan], findings: Mapping[str, HostFindings]) -> list[Check]:
    """Save the fleet's plan-vs-actual records; one row saying where."""
    records = [r for f in findings.values() for r in (f.facts.get(GROUP) or {}).get("records", [])]
    if not records or not plans:
        return []
    first = next(iter(plans.values()))
    path = save(first.fleet, records)
    found = f"{len(records)} engines saved to {path}"
    return [Check(first.name, "plan vs actual", "saved", found, "ok")]
