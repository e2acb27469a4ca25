"""The doctor's report: a table per host (check, expected, found, verdict, what to do), or
JSON with stable keys. Every value comes from a host, so nothing is read as rich markup."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from servekit.doctor.result import Check, HostFindings

COLUMNS = ("check", "expected", "found", "verdict", "what to do")
VERDICT_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
JSON_VERSION = 1


def failed(findings: Iterable[HostFindings]) -> bool:
    return any(check.failed for host in findings for check in host.checks)


def counts(findings: Iterable[HostFindings]) -> dict[str, int]:
    """Rows per verdict, every verdict present (0 when none)."""
    seen: Counter[str] = Counter(check.verdict for host in findings for check in host.checks)
    return {verdict: seen[verdict] for verdict in VERDICT_STYLE}


def host_table(host: HostFindings) -> Table:
    table = Table(title=f"host {host.host}", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for check in host.checks:
        table.add_row(*_cells(check))
    return table


def _cells(check: Check) -> list[Text]:
    """Plain Text cells: a value like `[/]` from a host prints as it is."""
    return [
        Text(check.check),
        Text(check.expected),
        Text(check.found),
        Text(check.verdict, style=VERDICT_STYLE[check.verdict]),
        Text(check.fix),
    ]


def summary_line(findings: list[HostFindings]) -> Text:
    parts = ", ".join(f"{n} {verdict}" for verdict, n in counts(findings).items())
    verdict = "FAILED" if failed(findings) else "passed"
    return Text(f"doctor {verdict}: {len(findings)} host(s), {parts}")


def print_report(findings: list[HostFindings], console: Console) -> None:
    for host in findings:
        console.print(host_table(host))
    console.print(summary_line(findings))


def as_json(findings: list[HostFindings]) -> dict[str, Any]:
    """`{"version", "failed", "counts", "hosts": [{"host", "checks": [Check...], "facts"}]}`."""
    return {
        "version": JSON_VERSION,
        "failed": failed(findings),
        "counts": counts(findings),
        "hosts": [
            {
                "host": host.host,
                "checks": [check.as_json() for check in host.checks],
                "facts": host.facts,
            }
            for host in findings
        ],
    }
