"""The result of a benchmark, assembled from its runs: each level's summary, the configuration,
the sweep analysis, the bandwidth ceiling and the warnings that need the numbers."""

from __future__ import annotations

from servekit.bench.load import LoadShape, RunOutcome
from servekit.bench.metrics import analyse_sweep, summarize, to_record
from servekit.bench.options import Options
from servekit.bench.prompts import HfTokenizer
from servekit.bench.schema import BenchResult, Ceiling, Config, Run, Slo, Target
from servekit.bench.target import Resolved, ServerInfo

SWEEP_SLO = Slo(ttft_ms=2000.0, tpot_ms=100.0)  # MLPerf's server preset for Llama-3.1-8B


def target_of(
    resolved: Resolved, info: ServerInfo, model: str, path: str, label: str | None
) -> Target:
    """What was measured: the endpoint, its engine and model, and the fleet's GPU ceiling."""
    return Target(
        url=resolved.base_url,
        endpoint=path,
        model=model,
        engine=info.engine,
        engine_version=info.version,
        label=label or resolved.label or f"{info.engine} {resolved.base_url}",
        prefix_caching=info.prefix_caching,
        host=resolved.host,
        gpu=resolved.gpu,
        decode_ceiling_tokens_per_s=resolved.decode_ceiling,
    )


def config_of(
    options: Options, levels: list[LoadShape], ignore_eos: bool, tokenizer: HfTokenizer | None
) -> Config:
    """How it was measured: the options as run (ignore_eos off where the server rejects it)."""
    return Config(
        scenario=options.scenario,
        input_len=options.input_len,
        output_len=options.output_len,
        ignore_eos=ignore_eos,
        tokenizer=str(tokenizer.path) if tokenizer else None,
        seed=options.seed,
        timeout_s=options.timeout_s,
        num_prompts=options.num_prompts,
        duration_s=options.duration_s,
        concurrency=[
            lv.users or lv.max_concurrency or 0 for lv in levels if lv.users or lv.max_concurrency
        ],
        request_rate=options.request_rate,
        burstiness=options.burstiness,
        slo=options.slo,
    )


def level_run(
    outcome: RunOutcome, shape: LoadShape, options: Options, tokenizer: HfTokenizer | None
) -> Run:
    """One level's requests, in order, and their summary."""
    records = sorted(
        (to_record(t, outcome.start, tokenizer) for t in outcome.timings), key=lambda r: r.index
    )
    return Run(
        concurrency=shape.users or shape.max_concurrency,
        request_rate=shape.request_rate,
        started_at_unix=outcome.start_wall,
        summary=summarize(records, outcome.duration_s, options.slo, options.output_len),
        requests=records,
    )


def add_analysis(
    result: BenchResult, options: Options, has_usage: bool, tokenizer: HfTokenizer | None
) -> None:
    """Sweep analysis, the bandwidth ceiling and the warnings that need the numbers."""
    summaries = [(r.concurrency or 0, r.summary) for r in result.runs]
    if options.scenario == "sweep" and summaries:
        slo = options.slo if not options.slo.is_empty() else SWEEP_SLO
        result.sweep = analyse_sweep(summaries, slo)
    single = next((s for c, s in summaries if c == 1 and result.config.scenario != "rate"), None)
    target = result.target
    if single is not None and single.tpot_ms.mean > 0 and target.decode_ceiling_tokens_per_s:
        achieved = 1000.0 / single.tpot_ms.mean
        result.ceiling = Ceiling(
            gpu=target.gpu or "?",
            ceiling_tokens_per_s=target.decode_ceiling_tokens_per_s,
            achieved_tokens_per_s=achieved,
            share=achieved / target.decode_ceiling_tokens_per_s,
        )
    if tokenizer is None:
        counted = [
            r.server_prompt_tokens
            for run in result.runs
            for r in run.requests
            if r.server_prompt_tokens is not None
        ]
        mean = (
            f"; the server counted {sum(counted) / len(counted):.0f} on average" if counted else ""
        )
        result.warnings.append(
            f"no tokenizer for {target.model}: prompts are {options.input_len} common words, "
            f"about one token each{mean}; give --tokenizer PATH for exact lengths"
        )
    if not has_usage:
        source = "the tokenizer" if tokenizer else "streamed chunks (one token each, an estimate)"
        result.warnings.append(f"the server reports no usage: output tokens counted from {source}")
    short = sum(r.summary.short_outputs for r in result.runs)
    completed = sum(r.summary.completed for r in result.runs)
    if short and target.engine == "ollama":
        result.warnings.append(
            "Ollama ignores ignore_eos: its answers end at the model's end of sequence, "
            "whatever --output-len asks"
        )
    if short:
        average = sum(r.summary.total_output_tokens for r in result.runs) / max(completed, 1)
        result.warnings.append(
            f"{short} of {completed} answers stopped before {options.output_len} tokens "
            f"(mean {average:.0f}); throughput counts the tokens actually streamed"
        )
