"""The stand-in engine: a deterministic tokenizer, token timing, the request queue and metrics.

Tokenizer: a token is a run of word characters or one punctuation character (regex
`\\w+|[^\\w\\s]`), so "Hello, world!" is 4 tokens. A chat prompt counts each message's text
plus 4 tokens of template per message, plus 2 for the assistant turn. Generated tokens are words
from a fixed list, each with a leading space, so re-tokenising the output gives exactly
`completion_tokens`.

Timing: the first token is sent `ttft` seconds after the request starts running, token i (0-based)
at `ttft + i / tokens_per_s`; deadlines are absolute, so scheduling jitter does not accumulate.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ._prefix import PrefixCache

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

VOCAB = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "every",
    "model",
    "serves",
    "tokens",
    "at",
    "its",
    "own",
    "pace",
    "and",
    "clients",
    "measure",
    "time",
    "to",
    "first",
    "token",
    "latency",
    "throughput",
    "with",
    "care",
    "so",
    "that",
    "numbers",
    "from",
    "stand",
    "ins",
    "match",
    "what",
    "real",
    "engines",
    "would",
    "report",
    "under",
    "load",
    "today",
]
TOKEN_TEXT = [" " + w for w in VOCAB]

CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_GENERATION_PROMPT = 2


def count_tokens(text: str) -> int:
    """Tokens in `text` by the stand-in's documented rule."""
    return len(_TOKEN_RE.findall(text))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request under the stand-in's fixed chat template."""
    total = CHAT_TOKENS_GENERATION_PROMPT
    for msg in messages:
        total += CHAT_TOKENS_PER_MESSAGE + count_tokens(_content_text(msg.get("content")))
    return total


PROFILE_FILE = "/etc/vllm-standin.conf"


def _profile_file() -> dict[str, str]:
    try:
        with open(PROFILE_FILE) as handle:
            pairs = [line.strip().split("=", 1) for line in handle if "=" in line]
    except OSError:
        return {}
    return {k: v for k, v in pairs if k.startswith("VLLM_STANDIN_")}


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


@dataclass
class Knobs:
    """Behaviour knobs read from VLLM_STANDIN_* environment variables."""

    startup_delay: float = 0.5
    ttft: float = 0.05
    tokens_per_s: float = 200.0
    fail_after_tokens: int | None = None
    eos_after: int | None = None
    chunk_log: str | None = None
    kv_blocks: int = 8192

    @classmethod
    def from_env(cls) -> Knobs:
        """The knobs from the environment, then from PROFILE_FILE (KEY=VALUE lines, the same
        names), which host tests write on a test host to change a unit's profile."""
        for key, value in _profile_file().items():
            os.environ.setdefault(key, value)
        fail = _env_float("VLLM_STANDIN_FAIL_AFTER_TOKENS", None)
        eos = _env_float("VLLM_STANDIN_EOS_AFTER", None)
        return cls(
            kv_blocks=int(_env_float("VLLM_STANDIN_KV_BLOCKS", 8192) or 8192),
            startup_delay=_env_float("VLLM_STANDIN_STARTUP_DELAY", 0.5) or 0.0,
            ttft=_env_float("VLLM_STANDIN_TTFT", 0.05) or 0.0,
            tokens_per_s=_env_float("VLLM_STANDIN_TOKENS_PER_S", 200.0) or 0.0,
            fail_after_tokens=None if fail is None else int(fail),
            eos_after=None if eos is None else int(eos),
            chunk_log=os.environ.get("VLLM_STANDIN_CHUNK_LOG") or None,
        )


# Bucket bounds as in vLLM's v1 Prometheus logger.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
TOKEN_BUCKETS = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10000,
    20000,
    50000,
    100000,
    200000,
)
FINISH_REASONS = ("stop", "length", "abort", "error")


@dataclass
class Histogram:
    """A Prometheus histogram: cumulative buckets rendered from per-bucket counts."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines = []
        cum = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cum += count
            lines.append(f'{name}_bucket{{{labels},le="{float(bound)}"}} {float(cum)}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(self.n)}')
        lines.append(f"{name}_count{{{labels}}} {float(self.n)}")
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        return lines


@dataclass
class Engine:
    """Queue, KV accounting and metrics shared by every request of one server."""

    model_name: str
    max_model_len: int
    max_num_seqs: int
    cache_info: dict[str, str]
    knobs: Knobs
    block_size: int = 16
    num_gpu_blocks: int = 8192
    running: int = 0
    waiting: int = 0
    used_blocks: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    success: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    prompt_hist: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    gen_hist: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    prefix_cache: PrefixCache | None = None
    _slots: asyncio.Semaphore | None = None
    _log: TextIO | None = None

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_num_seqs)
        if self.knobs.chunk_log:
            self._log = open(self.knobs.chunk_log, "a", buffering=1 << 16)  # noqa: SIM115

    async def admit(self) -> float:
        """Wait for a free sequence slot (counted as waiting); returns the queue time."""
        assert self._slots is not None
        start = time.monotonic()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        queued = time.monotonic() - start
        self.queue_time.observe(queued)
        return queued

    def release(self) -> None:
        assert self._slots is not None
        self.running -= 1
        self._slots.release()

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def log_chunk(self, request_id: str, index: int, kind: str) -> None:
        """Append `<time.time()> <request id> <token index> <kind>` to VLLM_STANDIN_CHUNK_LOG."""
        if self._log is not None:
            self._log.write(f"{time.time():.6f} {request_id} {index} {kind}\n")

    def flush_log(self) -> None:
        if self._log is not None:
            self._log.flush()

    def render_metrics(self) -> str:
        """Prometheus text exposition with vLLM's metric names and labels."""
        labels = f'engine="0",model_name="{self.model_name}"'
        usage = min(1.0, self.used_blocks / self.num_gpu_blocks)
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, lines: list[str]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)

        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            [f"vllm:num_requests_running{{{labels}}} {float(self.running)}"],
        )
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            [f"vllm:num_requests_waiting{{{labels}}} {float(self.waiting)}"],
        )
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            [f"vllm:kv_cache_usage_perc{{{labels}}} {usage}"],
        )
        metric(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            [f"vllm:num_preemptions_total{{{labels}}} 0.0"],
        )
        metric(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            [f"vllm:prompt_tokens_total{{{labels}}} {float(self.prompt_tokens_total)}"],
        )
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            [f"vllm:generation_tokens_total{{{labels}}} {float(self.generation_tokens_total)}"],
        )
        metric(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [
                f'vllm:request_success_total{{{labels},finished_reason="{r}"}} {float(c)}'
                for r, c in self.success.items()
            ],
        )
        for name, hist, help_ in (
            (
                "vllm:time_to_first_token_seconds",
                self.ttft,
                "Histogram of time to first token in seconds.",
            ),
            (
                "vllm:inter_token_latency_seconds",
                self.itl,
                "Histogram of inter-token latency in seconds.",
            ),
            (
                "vllm:e2e_request_latency_seconds",
                self.e2e,
                "Histogram of e2e request latency in seconds.",
            ),
            (
                "vllm:request_queue_time_seconds",
                self.queue_time,
                "Histogram of time spent in WAITING phase for request.",
            ),
            ("vllm:request_prompt_tokens", self.prompt_hist, "Number of prefill tokens processed."),
            (
                "vllm:request_generation_tokens",
                self.gen_hist,
                "Number of generation tokens processed.",
            ),
        ):
            metric(name, "histogram", help_, hist.render(name, labels))
        info = ",".join(f'{k}="{v}"' for k, v in sorted(self.cache_info.items()))
        metric(
            "vllm:cache_config_info",
            "gauge",
            "Information of the LLMEngine CacheConfig",
            [f'vllm:cache_config_info{{{info},engine="0"}} 1.0'],
        )
        if self.prefix_cache is not None:
            out.extend(self.prefix_cache.render(labels))
        return "\n".join(out) + "\n"
