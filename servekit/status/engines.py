"""The status snapshot straight from each vLLM server's /metrics and /health, for fleets that
declare no monitoring. Rates need two samples: each snapshot compares with the one before
(the first waits one interval for its second sample). Counters that went down were reset
(the engine restarted) and count from 0, as Prometheus' rate() does."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from servekit.placement import FleetPlan
from servekit.status.declared import (
    GENERATED_TOKENS,
    KV_CACHE,
    REQUESTS,
    RUNNING,
    TTFT,
    WAITING,
    DeclaredEngine,
    declared_engines,
    declared_hosts,
)
from servekit.status.expositions import (
    ExpositionError,
    Sample,
    bucket_increase,
    bucket_quantile,
    buckets,
    increase,
    parse,
    peak,
    total,
)
from servekit.status.ollama import probe_all
from servekit.status.report import FleetStatus, ReplicaStatus, down_names, host_rows


@dataclass(frozen=True)
class Scrape:
    """One look at one engine: its samples (None when /metrics did not answer, with `error`)."""

    at: float
    samples: list[Sample] | None
    error: str | None = None
    healthy: bool | None = None


def scrape(client: httpx.Client, engine: DeclaredEngine) -> Scrape:
    """GET /metrics and /health of one engine (no key: vLLM guards only /v1, see declared)."""
    if engine.url is None:
        return Scrape(time.time(), None, engine.unreachable)
    url = engine.url
    try:
        answer = client.get(f"{url}/metrics")
        at = time.time()
        if answer.status_code != 200:
            return Scrape(at, None, f"{url}/metrics answered {answer.status_code}")
        samples = parse(answer.text)
    except httpx.HTTPError as error:
        return Scrape(
            time.time(), None, f"cannot reach {url}/metrics: {error or type(error).__name__}"
        )
    except ExpositionError as error:
        return Scrape(at, None, f"{url}/metrics is not Prometheus' text format: {error}")
    try:
        healthy = client.get(f"{url}/health").status_code == 200
    except httpx.HTTPError:
        healthy = False
    return Scrape(at, samples, healthy=healthy)


def _per_second(
    before: list[Sample], after: list[Sample], name: str, seconds: float
) -> float | None:
    grown = increase(total(before, name), total(after, name))
    return None if grown is None or seconds <= 0 else grown / seconds


def replica_row(engine: DeclaredEngine, before: Scrape | None, after: Scrape) -> ReplicaStatus:
    """One replica's row from its latest scrape and the one before (rates need both)."""
    row = engine.row(
        up=after.samples is not None,
        ready=after.healthy,
        reason=after.error if after.samples is None else None,
    )
    if after.samples is None:
        return row
    now = after.samples
    values: dict[str, float | None] = {
        "kv_cache_pct": None if (kv := peak(now, KV_CACHE)) is None else 100 * kv,
        "running": total(now, RUNNING),
        "waiting": total(now, WAITING),
    }
    if before is not None and before.samples is not None:
        seconds, old = after.at - before.at, before.samples
        values["requests_per_s"] = _per_second(old, now, REQUESTS, seconds)
        values["tokens_per_s"] = _per_second(old, now, GENERATED_TOKENS, seconds)
        grown = bucket_increase(buckets(old, TTFT), buckets(now, TTFT))
        values["ttft_p50_s"] = bucket_quantile(0.5, grown)
        values["ttft_p95_s"] = bucket_quantile(0.95, grown)
    if after.healthy is False:
        row = row.model_copy(update={"reason": "/health does not answer 200"})
    return row.model_copy(update=values)


@dataclass
class EngineWatcher:
    """Scrapes every declared engine each time it is asked, keeping the previous scrapes."""

    plan: FleetPlan
    timeout_s: float = 5.0
    previous: dict[tuple[str, str, str], Scrape] = field(default_factory=dict)

    def scrape_all(self) -> dict[tuple[str, str, str], Scrape]:
        engines = declared_engines(self.plan)
        with httpx.Client(timeout=self.timeout_s) as client, ThreadPoolExecutor(8) as pool:
            scrapes = list(pool.map(lambda e: scrape(client, e), engines))
        return {e.key(): s for e, s in zip(engines, scrapes, strict=True)}

    def snapshot(self, interval_s: float) -> FleetStatus:
        """A snapshot against the previous one (the first waits `interval_s` for a second)."""
        if not self.previous:
            self.previous = self.scrape_all()
            time.sleep(interval_s)
        latest = self.scrape_all()
        rows = [
            replica_row(engine, self.previous.get(engine.key()), latest[engine.key()])
            for engine in declared_engines(self.plan)
        ]
        times = [s.at for s in latest.values()] or [time.time()]
        earlier = [s.at for s in self.previous.values()] or times
        self.previous = latest
        ollama = probe_all(self.plan, self.timeout_s)
        return FleetStatus(
            fleet=self.plan.fleet,
            source="engines",
            at=max(times),
            window_s=round(max(times) - min(earlier), 3),
            replicas=rows,
            ollama=ollama,
            hosts=host_rows(declared_hosts(self.plan), rows, [], None),
            down=down_names(rows, [], ollama),
        )
