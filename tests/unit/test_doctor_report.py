"""The doctor's report: a table per host that prints host values as they are (no markup), a
summary, and JSON with stable keys."""

from __future__ import annotations

import io
import json

from rich.console import Console

from servekit.doctor.report import as_json, counts, failed, print_report
from servekit.doctor.result import Check, HostFindings

ROWS = [
    Check("gpu1", "driver version", "≥ 580.65.06", "535.247.01 < 580.65.06", "fail", "upgrade"),
    Check("gpu1", "ECC errors", "0", "0 on 8 GPUs", "ok"),
    Check("gpu1", "GPU clocks", "none", "[bold]HW Slowdown[/]", "warn", "check cooling"),
]


def printed(findings: list[HostFindings]) -> str:
    buffer = io.StringIO()
    print_report(findings, Console(file=buffer, width=200, markup=False, color_system=None))
    return buffer.getvalue()


def test_a_table_per_host_with_the_values_as_they_are() -> None:
    text = printed([HostFindings("gpu1", list(ROWS)), HostFindings("gpu2", [])])
    assert "host gpu1" in text and "host gpu2" in text
    for column in ("check", "expected", "found", "verdict", "what to do"):
        assert column in text
    assert "[bold]HW Slowdown[/]" in text  # a host's text is never read as markup
    assert "535.247.01 < 580.65.06" in text and "upgrade" in text
    assert "doctor FAILED: 2 host(s), 1 ok, 1 warn, 1 fail, 0 skip" in text


def test_passed_when_nothing_fails() -> None:
    findings = [HostFindings("gpu1", ROWS[1:])]
    assert not failed(findings)
    assert "doctor passed: 1 host(s), 1 ok, 1 warn, 0 fail, 0 skip" in printed(findings)


def test_json_has_stable_keys() -> None:
    findings = [HostFindings("gpu1", list(ROWS), {"gpu": {"gpus": 8}})]
    report = json.loads(json.dumps(as_json(findings)))
    assert list(report) == ["version", "failed", "counts", "hosts"]
    assert report["version"] == 1 and report["failed"] is True
    assert report["counts"] == {"ok": 1, "warn": 1, "fail": 1, "skip": 0}
    host = report["hosts"][0]
    assert list(host) == ["host", "checks", "facts"] and host["facts"] == {"gpu": {"gpus": 8}}
    assert list(host["checks"][0]) == ["host", "check", "expected", "found", "verdict", "fix"]
    assert host["checks"][0]["found"] == "535.247.01 < 580.65.06"
    assert counts([]) == {"ok": 0, "warn": 0, "fail": 0, "skip": 0}
