"""How close is the planner's KV cache to what vLLM logged at startup? Prints a table.

For every record of tests/data/vllm_startup_logs*.toml: the planner's KV tokens for the logged
inputs (model, GPU, TP/PP, max_model_len, gpu_memory_utilization, quantization, KV dtype, the
profiled batch) beside the logged "GPU KV cache size", the signed error, and the distribution of
errors (median, p90 of |error|, largest over-estimate) over all records and per GPU family.

    .venv/bin/python benchmarks/planner_accuracy.py [--all] [--data FOLDER]

--data reads a folder's vllm_startup_logs*.toml and `servekit doctor`'s <fleet>.plan-vs-actual.json
(in $SERVEKIT_STATE_DIR, else ./cloud): point it at a folder holding both to add your own hosts.

--all also lists the records kept out of the accuracy test (each says why in the data file).
Records with `known_miss` are in the test but not fitted yet (the test expects them to fail):
marked in the table, counted in the "all" summary and left out of the "fitted" one.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tomllib
from pathlib import Path
from typing import Any

from servekit import catalog, planner

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"

SAME_LOG_KEYS = (
    "source",
    "model",
    "gpu",
    "tensor_parallel",
    "pipeline_parallel",
    "max_model_len",
    "gpu_memory_utilization",
    "kv_cache_tokens",
)
"""Two records with these equal describe the same log (collected twice, from two corpora)."""


def data_files(directory: Path = DATA) -> list[Path]:
    """Every startup-log file: vllm_startup_logs.toml, the vllm_startup_logs_*.toml beside it,
    and the `<fleet>.plan-vs-actual.json` files `servekit doctor` saves from real hosts."""
    logs = sorted(directory.glob("vllm_startup_logs*.toml"))
    return logs + sorted(directory.glob("*.plan-vs-actual.json"))


def file_records(path: Path) -> list[dict[str, Any]]:
    """The `log` records of one data file (TOML, or the doctor's JSON)."""
    text = path.read_text(encoding="utf-8")
    document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    found: list[dict[str, Any]] = document.get("log", [])
    return found


def records(include_all: bool = False, directory: Path = DATA) -> list[dict[str, Any]]:
    """The startup-log records of every data file, each log once (the first file's record wins),
    those in the accuracy test unless include_all."""
    seen: set[tuple[Any, ...]] = set()
    logs: list[dict[str, Any]] = []
    for path in data_files(directory):
        for record in file_records(path):
            key = tuple(record.get(name) for name in SAME_LOG_KEYS)
            if key in seen:
                continue
            seen.add(key)
            logs.append(record | {"file": path.name})
    return [r for r in logs if include_all or r["in_accuracy_test"]]


def predicted_tokens(record: dict[str, Any]) -> int:
    """The planner's KV tokens for the record's logged inputs."""
    model = catalog.find_model(record["model"])
    assert model is not None, record["model"]
    gpu = catalog.gpu(record["gpu"])
    request = planner.Request(
        max_model_len=record["max_model_len"],
        quantization=record["quantization"],
        kv_cache_dtype=record["kv_cache_dtype"],
        gpu_memory_utilization=record["gpu_memory_utilization"],
        tensor_parallel=record["tensor_parallel"],
        pipeline_parallel=record["pipeline_parallel"],
    )
    return planner.kv_cache_tokens(
        model,
        gpu,
        record["tensor_parallel"],
        record["pipeline_parallel"],
        request,
        profiling(record),
    )


def profiling(record: dict[str, Any]) -> planner.Profiling:
    """How the logged vLLM profiled: its batch, engine, version, block size, whether it took
    the CUDA graph estimate from the KV cache where the log shows it ("unknown" or absent: the
    version's default), and whether its GPUs had P2P where the log says (absent: the GPU's)."""
    tokens = record["profile_tokens"]
    graphs = record.get("cuda_graph_in_kv")
    return planner.Profiling(
        tokens=tokens if isinstance(tokens, int) else None,
        max_num_seqs=record.get("max_num_seqs"),
        engine=record["engine"],
        version=vllm_version(record),
        cuda_graph_estimate=graphs if isinstance(graphs, bool) else None,
        block_size=record.get("block_size", planner.BLOCK_SIZE),
        enforce_eager=record.get("enforce_eager", False),
        peer_to_peer=record.get("peer_to_peer"),
    )


def vllm_version(record: dict[str, Any]) -> tuple[int, int]:
    """(major, minor) of the logged vLLM; where the log does not state it, the version its own
    arithmetic shows (`profile_as_version`, with `profile_as_why`), else the pinned version."""
    stated = record.get("profile_as_version", record.get("vllm_version", ""))
    found = re.match(r"(\d+)\.(\d+)", str(stated))
    return (int(found[1]), int(found[2])) if found else planner.PINNED_VLLM


def error(record: dict[str, Any]) -> float:
    """Signed relative error of the prediction: + over-estimates vLLM's KV cache."""
    return predicted_tokens(record) / record["kv_cache_tokens"] - 1


def known_miss(record: dict[str, Any]) -> str:
    """Why a record in the test is not fitted yet ("" when it is): the data file's `known_miss`."""
    return str(record.get("known_miss", "")) if record["in_accuracy_test"] else ""


def plannable(record: dict[str, Any]) -> bool:
    """The record's model and GPU are in the catalog and its KV tokens are a number."""
    try:
        catalog.gpu(record["gpu"])
    except catalog.CatalogError:
        return False
    found = catalog.find_model(record["model"]) is not None
    return found and isinstance(record["kv_cache_tokens"], int)


def family(gpu_name: str) -> str:
    """GPU for the per-GPU rows: the catalog name (H100-SXM, RTX-4090, ...)."""
    return catalog.gpu(gpu_name).name


def summary(errors: list[float]) -> str:
    if not errors:
        return "no records"
    absolute = sorted(abs(e) for e in errors)
    p90 = absolute[min(len(absolute) - 1, int(0.9 * len(absolute)))]
    worst_over = max(errors)
    return (
        f"n={len(errors)}  median |err| {statistics.median(absolute):.1%}  p90 |err| {p90:.1%}  "
        f"max over-estimate {max(worst_over, 0.0):+.1%}  "
        f"within ±10%: {sum(abs(e) <= 0.10 for e in errors)}/{len(errors)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also the records kept out of tests")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of vllm_startup_logs*.toml")
    args = parser.parse_args()
    rows = records(include_all=args.all, directory=args.data)
    print(f"{'record':46} {'GPU':12} {'TPxPP':>5} {'logged':>9} {'planned':>9} {'error':>7}")
    by_family: dict[str, list[float]] = {}
    errors: list[float] = []
    fitted: list[float] = []
    for record in rows:
        if not plannable(record):
            print(f"{record['id']:46} {record['gpu']:12} not planned: {record['why_not'][:60]}")
            continue
        e = error(record)
        mark = "" if record["in_accuracy_test"] else "  (not in test)"
        mark = "  (known miss)" if known_miss(record) else mark
        print(
            f"{record['id']:46} {record['gpu']:12} "
            f"{record['tensor_parallel']:>3}x{record['pipeline_parallel']} "
            f"{record['kv_cache_tokens']:>9,} {predicted_tokens(record):>9,} {e:>+7.1%}{mark}"
        )
        if record["in_accuracy_test"]:
            errors.append(e)
            by_family.setdefault(family(record["gpu"]), []).append(e)
            fitted += [] if known_miss(record) else [e]
    print(f"\nall: {summary(errors)}")
    print(f"fitted (known misses left out): {summary(fitted)}")
    for name, values in sorted(by_family.items()):
        print(f"{name}: {summary(values)}")
    misses = [r for r in rows if known_miss(r)]
    print(f"\nknown misses ({len(misses)} of {len(errors)} in the test):")
    for record in misses:
        print(f"  {record['id']}: {known_miss(record)}")


if __name__ == "__main__":
    main()
