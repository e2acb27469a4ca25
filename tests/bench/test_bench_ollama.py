"""servekit bench against the stand-in Ollama server (its OpenAI-compatible /v1)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from bench_helpers import Server, bench

OLLAMA_MODEL = "qwen2.5:0.5b"


def test_ollama_chat_stream_and_its_ignored_ignore_eos(start_ollama: Callable[..., Server]) -> None:
    server = start_ollama(OLLAMA_MODEL, parallel=2, ttft="0.1", tokens_per_s="100", eos_after="10")
    result = bench(
        server.url, model=OLLAMA_MODEL, scenario="concurrent", users=2, num_prompts=4,
        input_len=16, output_len=30,
    )  # fmt: skip
    assert result.target.engine == "ollama"
    assert result.target.endpoint == "/v1/chat/completions"
    (run,) = result.runs
    s = run.summary
    assert s.completed == 4
    # Ollama stops at its end-of-sequence whatever ignore_eos says: the true count is reported.
    assert all(r.output_tokens == 10 and r.finish_reason == "stop" for r in run.requests)
    assert s.short_outputs == 4 and s.mean_output_tokens == 10
    assert any("Ollama ignores ignore_eos" in w for w in result.warnings)
    assert any("4 of 4 answers stopped before 30 tokens" in w for w in result.warnings)
    # No tokenizer: word prompts, and the server's own prompt count (chat template included).
    assert all(r.server_prompt_tokens == 16 + 4 + 2 for r in run.requests)
    assert any("no tokenizer" in w for w in result.warnings)
    assert s.ttft_ms.mean == pytest.approx(100, abs=30)
    assert s.tpot_ms.mean == pytest.approx(10, abs=2)


def test_ollama_queues_beyond_its_parallel_slots(start_ollama: Callable[..., Server]) -> None:
    """One slot (OLLAMA_NUM_PARALLEL=1) and two users: every other request waits a whole answer."""
    server = start_ollama(OLLAMA_MODEL, parallel=1, ttft="0.05", tokens_per_s="100")
    result = bench(
        server.url, model=OLLAMA_MODEL, scenario="concurrent", users=2, num_prompts=4,
        input_len=8, output_len=10,
    )  # fmt: skip
    s = result.runs[0].summary
    one_answer_ms = 50 + 9 * 10
    assert s.completed == 4
    assert s.ttft_ms.max > one_answer_ms + 40  # waited for the other request
    assert s.ttft_ms.median < one_answer_ms * 2.5
    assert s.tpot_ms.mean == pytest.approx(10, abs=2)  # decoding itself is not slower
