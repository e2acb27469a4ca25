"""The laptop plan's memory estimate against Ollama's own (memory.required.full in its server
log; tests/data/ollama_memory_logs.toml). README "Planner" says where the two differ."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from servekit import catalog, planner

DATA = Path(__file__).resolve().parents[1] / "data" / "ollama_memory_logs.toml"
LOGS: list[dict[str, Any]] = tomllib.loads(DATA.read_text(encoding="utf-8"))["log"]
GIB = 2**30


def planned_gib(log: dict[str, Any]) -> float:
    model = catalog.find_model(log["model"])
    assert model is not None and model.ollama_tag == log["tag"], log["id"]
    need = planner.ollama_need_bytes(
        model, log["context_per_request"], log["num_parallel"], log["kv_cache_type"]
    )
    return need / GIB


def test_records_are_complete() -> None:
    assert len(LOGS) >= 3
    for log in LOGS:
        assert log["source"].startswith("https://github.com/")
        assert log["required_full_gib"] > log["weights_total_gib"] + log["required_kv_gib"]


@pytest.mark.parametrize("log", LOGS, ids=lambda log: log["id"])
def test_plan_never_below_ollama(log: dict[str, Any]) -> None:
    """The plan asks for at least what Ollama asks for (2 % slack): below it, the plan would call
    a model 'fits' that Ollama spills to the CPU."""
    assert planned_gib(log) >= 0.98 * log["required_full_gib"], log["id"]


@pytest.mark.parametrize(
    "log", [log for log in LOGS if not log["vision"]], ids=lambda log: log["id"]
)
def test_text_model_close_to_ollama(log: dict[str, Any]) -> None:
    """A text-only model: the plan is within 10 % above Ollama's number."""
    error = planned_gib(log) / log["required_full_gib"] - 1
    assert error <= 0.10, f"{log['id']}: {error:+.1%}"


def test_sliding_window_kv_is_counted_in_full() -> None:
    """Gemma 3 keeps most layers' KV to a window in Ollama; the plan counts every layer at full
    context, so its KV cache is above Ollama's (conservative)."""
    log = next(log for log in LOGS if log["id"] == "deep-research-14-gemma3-12b-8k-cpu")
    model = catalog.find_model(log["model"])
    assert model is not None and model.sliding_window
    plan_kv = (
        planner.ollama_need_bytes(model, log["context_per_request"], log["num_parallel"], "f16")
        - planner.ollama_need_bytes(model, 0, 1, "f16")
    ) / GIB
    assert plan_kv > 2 * log["required_kv_gib"]
