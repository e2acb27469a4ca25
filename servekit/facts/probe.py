"""Run a program only if the host has it, and keep its exit status, for facts that survive failures.

pyinfra fails a host when a fact's command exits non-zero, and a missing program would be a
silent default. `probe()` wraps a command so that it always succeeds and reports what happened on
its last line: the exit status of the command, or `missing` when the program is not installed.
"""

from __future__ import annotations

STATUS_PREFIX = "servekit-status="
MISSING = "missing"


def probe(program: str, command: str) -> str:
    """A shell command that runs `command` (stderr merged) if `program` exists, then its status."""
    return (
        f"if command -v {program} >/dev/null 2>&1; then {command} 2>&1; "
        f'echo "{STATUS_PREFIX}$?"; else echo "{STATUS_PREFIX}{MISSING}"; fi'
    )


def split_status(output: list[str]) -> tuple[list[str], str]:
    """(the command's output lines, its status: an exit code as text, or `missing`)."""
    if output and output[-1].startswith(STATUS_PREFIX):
        return output[:-1], output[-1].removeprefix(STATUS_PREFIX)
    return output, "unknown"
