"""The `--json` file of `servekit bench`: one benchmark, every request's timings, its summaries.

The layout is versioned by `schema` (`servekit.bench/1`); fields are only ever added within a
version. Times are seconds in per-request records and milliseconds in summaries, as in
`vllm bench serve`'s own result files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

SCHEMA = "servekit.bench/1"

Scenario = Literal["single", "concurrent", "sweep", "rate"]
RequestStatus = Literal["ok", "timeout", "error"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Slo(Record):
    """Service-level objectives a request must meet to count towards goodput (milliseconds)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def is_empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2el_ms is None


class Target(Record):
    """What was benchmarked."""

    url: str = Field(description="base URL, without /v1")
    endpoint: str = Field(description="path of the API used, e.g. /v1/completions")
    model: str
    engine: Literal["vllm", "ollama", "unknown"]
    engine_version: str | None = None
    label: str = Field(description="name used in tables and charts")
    prefix_caching: bool | None = Field(None, description="None when the server does not say")
    host: str | None = Field(None, description="inventory host, when found from an inventory")
    gpu: str | None = None
    decode_ceiling_tokens_per_s: float | None = Field(
        None, description="planner's single-stream memory-bandwidth ceiling"
    )


class Config(Record):
    """How the load was generated."""

    scenario: Scenario
    input_len: int
    output_len: int
    ignore_eos: bool
    tokenizer: str | None = Field(description="tokenizer used for exact prompt lengths")
    seed: int
    timeout_s: float
    num_prompts: int | None
    duration_s: float | None
    concurrency: list[int] = Field(description="closed-loop users per run (rate: max concurrency)")
    request_rate: float | None = None
    burstiness: float = 1.0
    slo: Slo = Field(default_factory=Slo)


class RequestRecord(Record):
    """One request as the client saw it."""

    index: int
    request_id: str = Field(description="sent as X-Request-Id (vLLM logs it as cmpl-<id>)")
    status: RequestStatus
    start_s: float = Field(description="when it was sent, from the run's start")
    ttft_s: float | None = None
    e2el_s: float | None = None
    itl_s: list[float] = Field(default_factory=list, description="gaps between streamed chunks")
    prompt_tokens: int = Field(description="prompt length as sent (tokenizer count or estimate)")
    server_prompt_tokens: int | None = None
    output_tokens: int = 0
    output_tokens_source: Literal["usage", "tokenizer", "chunks"] = "usage"
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None


class Stats(Record):
    """Distribution of one latency in milliseconds (numpy-style linear percentiles)."""

    mean: float
    std: float
    median: float
    p90: float
    p99: float
    max: float


class Summary(Record):
    """Run-level metrics, defined as `vllm bench serve` defines them."""

    completed: int
    failed: int
    timed_out: int
    failed_pct: float
    timed_out_pct: float
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None = Field(None, description="requests/s meeting every SLO")
    goodput_pct: float | None = None
    peak_output_throughput: float = Field(description="most output tokens in one 1 s bucket")
    peak_concurrency: int
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2el_ms: Stats
    short_outputs: int = Field(0, description="requests that stopped before output_len tokens")
    mean_output_tokens: float = 0.0


class Run(Record):
    """One load level: a closed loop of `concurrency` users, or an open-loop request rate."""

    concurrency: int | None
    request_rate: float | None
    started_at_unix: float = Field(description="wall clock (time.time()) at start_s = 0")
    summary: Summary
    requests: list[RequestRecord]


class SweepAnalysis(Record):
    """Where throughput stops growing and latency breaks, over a concurrency sweep."""

    throughput_knee: int | None = Field(
        description="concurrency after which doubling gained < 10 % (None: still growing)"
    )
    latency_break: int | None = Field(description="first concurrency missing the SLO")
    latency_break_reason: str | None = None
    slo: Slo


class Ceiling(Record):
    """Achieved single-stream decode against the planner's memory-bandwidth ceiling."""

    gpu: str
    ceiling_tokens_per_s: float
    achieved_tokens_per_s: float
    share: float


class TimeRange(Record):
    """When the load ran (wall clock), to find it again in the fleet's metrics."""

    start_unix: float
    end_unix: float
    start: str = Field(description="ISO 8601, UTC")
    end: str = Field(description="ISO 8601, UTC")


class PrometheusLink(Record):
    """The run's time range in the fleet's Prometheus: its expression browser with the engines'
    load and the GPUs over the run, and the queries it graphs."""

    url: str = Field(description="Prometheus as this machine reached it (often an SSH tunnel)")
    graph_url: str
    queries: list[str]
    step_s: float = Field(description="a resolution that shows the run in about 250 points")


class BenchResult(Record):
    """The whole `--json` file."""

    schema_: str = Field(SCHEMA, alias="schema")
    servekit_version: str
    started_at: str
    target: Target
    config: Config
    runs: list[Run]
    sweep: SweepAnalysis | None = None
    ceiling: Ceiling | None = None
    warnings: list[str] = Field(default_factory=list)
    time_range: TimeRange | None = Field(None, description="absent in files before it existed")
    prometheus: PrometheusLink | None = Field(None, description="when the fleet has monitoring")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_serializer(mode="wrap")
    def _leave_out_absent_additions(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Fields added within servekit.bench/1 are left out when absent, so a file written
        before them reads and writes back unchanged."""
        data = handler(self)
        for name in ("time_range", "prometheus"):
            if isinstance(data, dict) and data.get(name, 0) is None:
                del data[name]
        return data

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(by_alias=True, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> BenchResult:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))
