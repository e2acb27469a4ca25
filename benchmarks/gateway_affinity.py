"""`benchmarks/gateway.py --affinity`: the prefix-cache hit rate with least-outstanding and with
prefix-affinity routing, and how the two affinity constants (bytes hashed, balance factor) change
it. Each run: 4 fresh stand-in vLLM replicas (prefix cache of 64 blocks of 16 tokens, about 3 of
the 8 system prompts), a fresh HAProxy with servekit's rendered config, 256 chat requests (a
random one of 8 system prompts of ~340 tokens sharing a ~170-byte opening, a distinct user
message) 16 at a time; the hit rate is hits / queries summed over the replicas' own counters.
Seeds change the prompts' texts, so which replica each one hashes to (tests/standins/affinity.py).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from standins.affinity import Result, Workload, measure

from servekit.gateway.haproxy import BALANCE_FACTOR, PREFIX_BYTES

PREFIX_SWEEP = (64, 128, 256, 1024)
FACTOR_SWEEP = (125, 150, 200)
ROOMY_CACHE = 512  # blocks: every system prompt fits on every replica


def runs(work: Path, seeds: list[int], routing: str, **options: int) -> list[Result]:
    cache = options.pop("cache_blocks", Workload.cache_blocks)
    return [
        measure(work, routing, replace(Workload(seed=seed), cache_blocks=cache), **options)
        for seed in seeds
    ]


def row(label: str, results: list[Result]) -> str:
    rates = [r.hit_rate for r in results]
    spread = "; ".join(" ".join(str(n) for n in r.requests) for r in results)
    return (
        f"| {label} | {statistics.mean(rates):.2f} ({min(rates):.2f}-{max(rates):.2f}) | "
        f"{max(r.most_over_fair for r in results):.2f} | {spread} |"
    )


def affinity_report(seeds: list[int]) -> str:
    """The markdown tables (slow: about 4 s per run, 2 + 2 + 12 runs per seed)."""
    head = "| routing | hit rate, mean (min-max) | busiest / fair share, worst | requests per replica, each seed |\n| --- | --- | --- | --- |"  # noqa: E501
    lines = [f"seeds {seeds}; servekit's constants: {PREFIX_BYTES} bytes, factor {BALANCE_FACTOR}"]
    with tempfile.TemporaryDirectory(prefix="gwaff-") as tmp:
        work = Path(tmp)
        lines += ["", "Cache of 64 blocks (about 3 of the 8 system prompts):", "", head]
        lines.append(row("least-outstanding", runs(work, seeds, "least-outstanding")))
        lines.append(row("prefix-affinity", runs(work, seeds, "prefix-affinity")))
        lines += ["", f"Cache of {ROOMY_CACHE} blocks (all 8 fit on every replica):", "", head]
        for routing in ("least-outstanding", "prefix-affinity"):
            lines.append(row(routing, runs(work, seeds, routing, cache_blocks=ROOMY_CACHE)))
        lines += ["", "prefix-affinity, cache of 64 blocks, by bytes hashed and balance factor:"]
        lines += ["", head]
        for prefix_bytes in PREFIX_SWEEP:
            for factor in FACTOR_SWEEP:
                results = runs(
                    work,
                    seeds,
                    "prefix-affinity",
                    prefix_bytes=prefix_bytes,
                    balance_factor=factor,
                )
                lines.append(row(f"{prefix_bytes} bytes, factor {factor}", results))
    return "\n".join(lines)
