"""The README's alert table is the one the rules give: every alert servekit ships, by name, in
the rules' order, with its expression, duration, severity and summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from servekit.monitoring.alert_table import (
    BEGIN,
    END,
    alert_table,
    example_monitoring,
    readable,
    readme_table,
    split_summary,
)
from servekit.monitoring.rules import alerts

README = Path(__file__).resolve().parents[2] / "README.md"


def table_names(table: str) -> list[str]:
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]
    return [row.split("|")[1].strip() for row in rows]


def test_the_readme_table_matches_the_rules() -> None:
    shown = readme_table(README.read_text())
    rules = alerts(example_monitoring())
    assert table_names(shown) == [alert.name for alert in rules]
    assert len(rules) == 18  # every alert issue 14 asks for, GpuMissing, OllamaDown, OllamaSlow
    assert shown == alert_table(), "regenerate: python -m servekit.monitoring.alert_table README.md"


def test_a_changed_rule_shows_as_a_different_table() -> None:
    monitoring = example_monitoring().model_copy(update={"waiting_requests": 64})
    assert "vllm:num_requests_waiting > 64" in alert_table(monitoring)
    assert alert_table(monitoring) != alert_table()
    without_gpus = example_monitoring().model_copy(update={"jobs": []})
    assert "GpuMissing" not in table_names(alert_table(without_gpus))


def test_summaries_read_as_meaning_and_command() -> None:
    meaning, action = split_summary(
        readable("{{ $labels.host }} does not answer: `ssh {{ $labels.host }} a: b`; then c")
    )
    assert (meaning, action) == ("HOST does not answer", "`ssh HOST a: b`; then c")
    assert readable("Xid {{ $value }} on GPU {{ $labels.gpu }}: `dmesg | grep xid`") == (
        "Xid VALUE on GPU N: `dmesg \\| grep xid`"
    )


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="no alert table"):
        readme_table("# README\n")
    assert readme_table(f"x\n{BEGIN}\n| a |\n{END}\ny") == f"{BEGIN}\n| a |\n{END}"
