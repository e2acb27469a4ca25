"""Facts `servekit doctor` reads about running vLLM engines: their answers to `/health` and
`/v1/models` (host_scripts/doctor_engine.py, the engine key read on the host), and vLLM's own
startup numbers from the unit's journal.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.host_scripts import script
from servekit.shell import quote as q

STARTUP_MARKS = (
    "GPU KV cache size",
    "Maximum concurrency for",
    "Model loading took",
    "Available KV cache memory",
)
"""The startup lines vLLM logs (the patterns and their sources: servekit.doctor.engines)."""


class EngineAnswers(FactBase[dict[str, Any]]):
    """`/health` and `/v1/models` of one engine, asked on its host (see doctor_engine.py)."""

    @override
    def command(self, spec: str) -> StringCommand:
        return StringCommand(
            "python3 -c", QuoteString(script("doctor_engine")), QuoteString(spec), "|| true"
        )

    @staticmethod
    @override
    def default() -> dict[str, Any]:
        return {"health": None, "health_error": "no answer", "key": "none", "models": []}

    @override
    def process(self, output: list[str]) -> dict[str, Any]:
        try:
            answers: dict[str, Any] = json.loads(output[-1])
        except (IndexError, json.JSONDecodeError):
            return {**self.default(), "health_error": " ".join(output)[-200:] or "no output"}
        return answers


class StartupLines(FactBase[list[str]]):
    """This boot's startup lines of a unit's current run (`journalctl -b` of the unit's
    InvocationID, so a restart's earlier numbers are not mixed in; the unit's whole boot
    journal when systemd reports no invocation)."""

    @override
    def command(self, unit: str) -> str:
        marks = "|".join(STARTUP_MARKS)
        return (
            f"i=$(systemctl show -p InvocationID --value {q(unit)} 2>/dev/null); "
            'if [ -n "$i" ]; then m="_SYSTEMD_INVOCATION_ID=$i"; '
            f"else m=--unit={q(unit)}; fi; "
            'journalctl -b "$m" --no-pager -o cat 2>/dev/null '
            f"| grep -E {q(marks)} | tail -n 64; true"
        )

    @staticmethod
    @override
    def default() -> list[str]:
        return []

    @override
    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if any(m in line for m in STARTUP_MARKS)]
