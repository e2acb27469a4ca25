"""Load generation: closed loops of N users, or open-loop arrivals at a request rate.

Closed loop: each user sends its next request as soon as its previous one finished.
Open loop: requests are sent at Poisson arrival times (burstiness 1) or gamma-distributed ones
(burstiness < 1 burstier, > 1 more regular), as `vllm bench serve --request-rate` does; with
`max_concurrency` an arrival waits for a free slot, and its clock starts when it gets one.
A run ends after `num_prompts` requests, or when `duration_s` has passed and the requests in
flight have finished (each bounded by the client's timeout).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from servekit.bench.client import Endpoint, StreamingClient, Timing
from servekit.bench.prompts import PromptMaker


@dataclass(frozen=True)
class LoadShape:
    """One load level."""

    users: int | None = None
    request_rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_prompts: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if (self.users is None) == (self.request_rate is None):
            raise ValueError("give either users (closed loop) or request_rate (open loop)")
        if self.num_prompts is None and self.duration_s is None:
            raise ValueError("give num_prompts or duration_s")


@dataclass
class RunOutcome:
    timings: list[Timing]
    start: float
    start_wall: float
    end: float

    @property
    def duration_s(self) -> float:
        return self.end - self.start


class _Bodies:
    """Request bodies: made up front when the count is known, else one at a time."""

    def __init__(self, maker: PromptMaker, endpoint: Endpoint, count: int | None) -> None:
        self.maker = maker
        self.endpoint = endpoint
        self.ready: list[tuple[bytes, int]] = []
        if count is not None:
            self.ready = [self._make() for _ in range(count)]

    def _make(self) -> tuple[bytes, int]:
        prompt = self.maker.make()
        return self.endpoint.body(prompt.text), prompt.tokens

    def get(self, index: int) -> tuple[bytes, int]:
        return self.ready[index] if index < len(self.ready) else self._make()


def arrival_gaps(rate: float, burstiness: float, seed: int) -> Callable[[], float]:
    """Seconds to the next arrival: gamma(shape=burstiness, mean=1/rate); 0 for an infinite rate."""
    if math.isinf(rate):
        return lambda: 0.0
    rng = random.Random(seed)
    theta = 1.0 / (rate * burstiness)
    return lambda: rng.gammavariate(burstiness, theta)


async def run_load(
    client: StreamingClient,
    maker: PromptMaker,
    shape: LoadShape,
    run_id: str,
    seed: int,
    on_done: Callable[[Timing], None] | None = None,
) -> RunOutcome:
    """Generate one load level and return every request's timing."""
    bodies = _Bodies(maker, client.endpoint, shape.num_prompts)
    timings: list[Timing] = []
    start_wall = time.time()
    start = time.perf_counter()
    deadline = start + shape.duration_s if shape.duration_s is not None else math.inf
    limit = shape.num_prompts if shape.num_prompts is not None else math.inf

    async def one(index: int) -> None:
        body, tokens = bodies.get(index)
        timing = Timing(index=index, request_id=f"{run_id}-{index}", prompt_tokens=tokens)
        await client.send(timing, body)
        timings.append(timing)
        if on_done is not None:
            on_done(timing)

    if shape.users is not None:
        await _closed_loop(one, shape.users, limit, deadline)
    else:
        await _open_loop(one, shape, seed, start, limit, deadline)
    end = time.perf_counter()
    return RunOutcome(timings=timings, start=start, start_wall=start_wall, end=end)


async def _closed_loop(
    send: Callable[[int], Awaitable[None]], users: int, limit: float, deadline: float
) -> None:
    """`users` users, each sending its next request when its previous one is answered."""
    counter = itertools.count()

    async def user() -> None:
        while True:
            index = next(counter)
            if index >= limit or time.perf_counter() >= deadline:
                return
            await send(index)
            # Let streams whose chunks already arrived be read (and timed) before this user
            # sends its next request: a wave of answers ending together must not be timed
            # late behind a wave of new requests.
            await asyncio.sleep(0)

    await asyncio.gather(*(user() for _ in range(users)))


async def _open_loop(
    send: Callable[[int], Awaitable[None]],
    shape: LoadShape,
    seed: int,
    start: float,
    limit: float,
    deadline: float,
) -> None:
    """Requests sent at their arrival times, however many are in flight (up to the cap)."""
    assert shape.request_rate is not None
    gap = arrival_gaps(shape.request_rate, shape.burstiness, seed)
    slots = asyncio.Semaphore(shape.max_concurrency) if shape.max_concurrency else None

    async def limited(index: int) -> None:
        if slots is None:
            await send(index)
            return
        async with slots:
            await send(index)

    tasks: list[asyncio.Task[None]] = []
    due = start
    for index in itertools.count():
        if index >= limit:
            break
        if index:
            due += gap()
        if due >= deadline:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(limited(index)))
    await asyncio.gather(*tasks)
