"""A whole benchmark: check the endpoint, run each load level, and assemble the result
(servekit/bench/result.py).

Scenarios: `single` (one user in a closed loop), `concurrent` (N users), `sweep` (1, 2, 4, ...
users up to a maximum) and `rate` (open-loop arrivals). Every level gets fresh prompts from its
own seed, so one level never warms the prefix cache for the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import json
import os
import resource
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from servekit import __version__
from servekit.bench.client import CHAT, COMPLETIONS, Endpoint, StreamingClient, Timing
from servekit.bench.load import LoadShape, run_load
from servekit.bench.options import Options
from servekit.bench.prompts import HfTokenizer, PromptMaker
from servekit.bench.result import add_analysis, config_of, level_run, target_of
from servekit.bench.schema import BenchResult, Run
from servekit.bench.target import Resolved, ServerInfo, TargetError
from servekit.bench.timerange import prometheus_link, time_range

LEVEL_SEED_STRIDE = 1_000_003


class Progress(Protocol):
    def level(self, description: str, total: int | None) -> None: ...
    def done(self, timing: Timing) -> None: ...
    def end(self) -> None: ...


def raise_open_files_limit(wanted: int) -> None:
    """Lift the soft limit on open files towards the hard one (one socket per stream)."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = hard if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def connections_needed(shape: LoadShape) -> int:
    """Connections a level will hold at once (open loops without a cap: a guess, at most 256)."""
    if shape.users or shape.max_concurrency:
        return shape.users or shape.max_concurrency or 1
    return min(shape.num_prompts or 256, 256)


@contextlib.contextmanager
def no_gc_pauses() -> Iterator[None]:
    """No cyclic garbage collection while a level runs: a full collection stalls every stream.

    Per-chunk objects are freed by reference counting; the few cycles wait until the level ends.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
        gc.collect()


def choose_path(option: str, engine: str) -> str:
    if option == "completions":
        return COMPLETIONS
    if option == "chat":
        return CHAT
    return COMPLETIONS if engine == "vllm" else CHAT


async def probe(client: StreamingClient, tokens: int = 4) -> Timing:
    """One short request: checks model, key and parameters before any timing counts."""
    timing = Timing(index=-1, request_id=f"sk-probe-{secrets.token_hex(4)}", prompt_tokens=0)
    body = client.endpoint.body("Say hello in one short sentence.", max_tokens=tokens)
    return await client.send(timing, body)


def probe_failure(timing: Timing, models: list[str], model: str, path: str) -> str | None:
    """Why the probe failed, and what to do about it (None when it did not)."""
    if timing.status == "ok":
        return None
    if timing.http_status == 401:
        return "the server wants an API key (401): give --api-key-file FILE"
    if timing.http_status == 404 and models and model not in models:
        return f"the server does not serve {model!r}; it serves: {', '.join(models)}"
    if timing.http_status == 404:  # the model is there (or not listed): the path is not
        kind, other = ("chat", "completions") if path == CHAT else ("completions", "chat")
        said = (timing.error or "").removeprefix("HTTP 404: ")
        return (
            f"POST {path} answered HTTP 404 ({said}): this server has no {kind} endpoint; "
            f"try --endpoint {other}"
        )
    return f"a first test request failed: {timing.error}"


def _history_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "servekit" / "bench-prompts-seen.json"


def seen_before(key: str, now: str) -> str | None:
    """When this server last got these exact prompts (None the first time); records now."""
    path = _history_file()
    try:
        seen = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        seen = {}
    previous = seen.get(key) if isinstance(seen, dict) else None
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        seen = seen if isinstance(seen, dict) else {}
        seen[key] = now
        path.write_text(json.dumps(seen, indent=0), encoding="utf-8")
    return previous if isinstance(previous, str) else None


async def run_benchmark(
    resolved: Resolved,
    info: ServerInfo,
    options: Options,
    tokenizer: HfTokenizer | None,
    progress: Progress | None = None,
    on_run: Callable[[Run], None] | None = None,
) -> BenchResult:
    """Probe the endpoint, run every level, and return the complete result."""
    model = resolved.model or (info.models[0] if len(info.models) == 1 else None)
    if model is None:
        served = ", ".join(info.models) or "none listed"
        raise TargetError(f"give --model NAME (the server serves: {served})")
    path = choose_path(options.endpoint, info.engine)
    endpoint = Endpoint(
        base_url=resolved.base_url,
        path=path,
        model=model,
        api_key=resolved.api_key,
        output_len=options.output_len,
        ignore_eos=True,
    )
    levels = options.levels()
    raise_open_files_limit(max((lv.users or lv.max_concurrency or 0) for lv in levels) + 256)
    warnings: list[str] = []
    endpoint, first = await _checked_endpoint(endpoint, options.timeout_s, info.models, warnings)
    has_usage = first.usage_output_tokens is not None
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    repeated = _repeated_prompts(resolved.base_url, model, info, options, tokenizer, started)
    if repeated is not None:
        warnings.append(repeated)
    runner = _LevelRunner(options, tokenizer, progress, on_run)
    began = time.time()
    runs = await runner.run_all(endpoint, levels, collect_text=not has_usage, warnings=warnings)
    span = time_range(began, time.time())
    result = BenchResult(
        servekit_version=__version__,
        started_at=started,
        target=target_of(resolved, info, model, path, options.label),
        config=config_of(options, levels, endpoint.ignore_eos, tokenizer),
        runs=runs,
        warnings=warnings,
        time_range=span,
    )
    if resolved.prometheus_url is not None and resolved.fleet is not None:
        result.prometheus = prometheus_link(resolved.prometheus_url, resolved.fleet, span)
    add_analysis(result, options, has_usage, tokenizer)
    return result


async def _checked_endpoint(
    endpoint: Endpoint, timeout_s: float, models: list[str], warnings: list[str]
) -> tuple[Endpoint, Timing]:
    """Send the probe (the server loads the model then, untimed: Ollama loads on first use).

    A server that rejects ignore_eos gets requests without it (and a warning); any other
    failure raises TargetError with what to do.
    """
    async with StreamingClient(endpoint, timeout_s) as client:
        first = await probe(client)
        if (
            first.status != "ok"
            and first.http_status == 400
            and "ignore_eos" in (first.error or "")
        ):
            endpoint = dataclasses.replace(endpoint, ignore_eos=False)
            client.endpoint = endpoint
            first = await probe(client)
            warnings.append("the server rejects ignore_eos: output lengths are not forced")
        failure = probe_failure(first, models, endpoint.model, endpoint.path)
        if failure is not None:
            raise TargetError(failure)
    return endpoint, first


def _repeated_prompts(
    base_url: str,
    model: str,
    info: ServerInfo,
    options: Options,
    tokenizer: HfTokenizer | None,
    started: str,
) -> str | None:
    """A warning when this server already got these exact prompts and may have cached them."""
    history_key = "|".join(
        [
            base_url,
            model,
            str(options.seed),
            str(options.input_len),
            str(tokenizer.path) if tokenizer else "words",
        ]
    )
    previous = seen_before(history_key, started)
    if previous is None or info.prefix_caching is False:
        return None
    cache = "has prefix caching on" if info.prefix_caching else "may cache prompt prefixes"
    return (
        f"this server {cache} and already got these exact prompts (same --seed "
        f"{options.seed}, at {previous}): TTFT and throughput will look better than they are; "
        "use another --seed"
    )


@dataclass
class _LevelRunner:
    """Runs the load levels one after the other over one connection pool."""

    options: Options
    tokenizer: HfTokenizer | None
    progress: Progress | None
    on_run: Callable[[Run], None] | None

    async def run_all(
        self, endpoint: Endpoint, levels: list[LoadShape], collect_text: bool, warnings: list[str]
    ) -> list[Run]:
        """Every level's run; a sweep stops at the first level where half the requests fail."""
        runs: list[Run] = []
        run_id = "sk" + secrets.token_hex(3)
        timeout_s = self.options.timeout_s
        async with StreamingClient(endpoint, timeout_s, collect_text=collect_text) as client:
            for number, shape in enumerate(levels):
                run = await self.run_level(client, shape, f"{run_id}-{number}", number)
                runs.append(run)
                if self.on_run is not None:
                    self.on_run(run)
                if self.ends_sweep(run):
                    warnings.append(
                        f"sweep stopped at {shape.users} users: half or more of the requests failed"
                    )
                    break
        return runs

    def ends_sweep(self, run: Run) -> bool:
        """A sweep goes no higher once half or more of a level's requests failed."""
        s = run.summary
        return self.options.scenario == "sweep" and s.failed + s.timed_out >= max(1, s.completed)

    async def run_level(
        self, client: StreamingClient, shape: LoadShape, run_id: str, number: int
    ) -> Run:
        """One level: fresh prompts from the level's own seed, warm connections, no GC pauses."""
        seed = self.options.seed + number * LEVEL_SEED_STRIDE
        maker = PromptMaker(self.tokenizer, self.options.input_len, seed)
        what = f"{shape.users} users" if shape.users else f"{shape.request_rate:g} req/s"
        await client.warm(connections_needed(shape))
        progress = self.progress
        if progress is not None:
            progress.level(what, shape.num_prompts)
        with no_gc_pauses():
            on_done = progress.done if progress is not None else None
            outcome = await run_load(client, maker, shape, run_id, seed, on_done=on_done)
        if progress is not None:
            progress.end()
        return level_run(outcome, shape, self.options, self.tokenizer)
