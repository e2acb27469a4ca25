"""Prefix affinity for real: Debian's `haproxy -db` with servekit's rendered config in front of 4
stand-in vLLM replicas whose prefix caches hold about 3 of 8 shared system prompts; the same
workload once with least-outstanding and once with prefix-affinity, the hit rate read from the
replicas' `vllm:prefix_cache_hits` / `vllm:prefix_cache_queries` (tests/standins/affinity.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from standins import affinity

pytestmark = pytest.mark.timeout(120)


def test_prefix_affinity_raises_the_hit_rate_within_a_bounded_load(tmp_path: Path) -> None:
    workload = affinity.Workload()
    least = affinity.measure(tmp_path, "least-outstanding", workload)
    sticky = affinity.measure(tmp_path, "prefix-affinity", workload)
    report = (
        f"hit rate: least-outstanding {least.hit_rate:.3f} {least.requests}, "
        f"prefix-affinity {sticky.hit_rate:.3f} {sticky.requests}"
    )
    print(report)
    assert sum(least.requests) == sum(sticky.requests) == workload.requests, report
    assert least.most_over_fair <= 1.25, report  # leastconn spreads evenly
    # measured here (seed 13): 0.51-0.58 vs 0.23-0.28; benchmarks/results.md: 0.47-0.62 vs 0.29-0.30
    assert sticky.hit_rate >= least.hit_rate + 0.15, report
    # hash-balance-factor 150: no replica past 1.5x the average in flight (+ slack)
    assert sticky.most_over_fair <= 1.75, report


def test_a_shared_prompt_start_sticks_to_one_replica_for_chat_and_completions(
    tmp_path: Path,
) -> None:
    """One request at a time (no load to bound): every request whose first message (chat) or
    prompt (completions) starts with the same 256 bytes reaches the same replica; other
    prefixes reach others; token ids go round robin."""
    workload = affinity.Workload(replicas=4)
    shared = workload.system_prompt(0)
    with affinity.gateway(tmp_path, "prefix-affinity", workload) as gw:
        for n in range(6):
            messages = [
                {"role": "system", "content": shared},
                {"role": "user", "content": f"question {n}"},
            ]
            body = {"model": affinity.MODEL, "messages": messages, "max_tokens": 1}
            assert gw.post("/v1/chat/completions", body) == 200
            body = {"model": affinity.MODEL, "prompt": f"{shared} question {n}", "max_tokens": 1}
            assert gw.post("/v1/completions", body) == 200
        served = [int(c[2]) for c in gw.counters()]
        assert sorted(served) == [0, 0, 0, 12], served
        for n in range(16):
            body = {"model": affinity.MODEL, "prompt": f"{n} other {shared}", "max_tokens": 1}
            assert gw.post("/v1/completions", body) == 200
        spread = [int(c[2]) for c in gw.counters()]
        assert sum(1 for before, after in zip(served, spread, strict=True) if after > before) >= 2
        for _ in range(16):  # no text to hash: HAProxy's round robin (along the ring)
            body = {"model": affinity.MODEL, "prompt": [1, 2, 3], "max_tokens": 1}
            assert gw.post("/v1/completions", body) == 200
        ids = [int(c[2]) for c in gw.counters()]
        assert sum(1 for before, after in zip(spread, ids, strict=True) if after > before) >= 3
