"""The README's alert table, generated from servekit's rules (`servekit.monitoring.rules`): one
row per alert with its expression and how long it must hold, its severity, what it means and
what to do (the summary Alertmanager shows, split at its first `: `; `{{ $labels.host }}` shown
as `HOST`).

The README holds the table between two marker lines; tests/unit/test_monitoring_readme.py checks
that it matches the rules. Regenerate it with `python -m servekit.monitoring.alert_table
README.md`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from servekit.hostplan import MonitoringHost, ScrapeJob, ScrapeTarget
from servekit.monitoring.rules import Alert, alerts

BEGIN = "<!-- alert table: generated from servekit/monitoring/rules.py -->"
END = "<!-- end of the alert table -->"
LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")
SHOWN = {"model_name": "MODEL", "gpu": "N"}
"""How a label reads in the table (default: its name in capitals)."""
VALUE = re.compile(r"\{\{\s*\$value[^}]*\}\}")


def example_monitoring() -> MonitoringHost:
    """Monitoring with the default thresholds and one DCGM target, so every alert appears."""
    gpu_host = ScrapeTarget(address="10.0.0.1:9400", labels={"host": "HOST", "gpus": "8"})
    return MonitoringHost(
        port=9090,
        scrape_interval="15s",
        retention="15d",
        jobs=[ScrapeJob(job="dcgm", targets=[gpu_host])],
    )


def readable(text: str) -> str:
    """A summary for people: labels as upper-case words, values as VALUE, Markdown-safe."""
    text = LABEL.sub(lambda m: SHOWN.get(m.group(1), m.group(1).upper()), text)
    return VALUE.sub("VALUE", text).replace("|", "\\|")


def split_summary(summary: str) -> tuple[str, str]:
    """(what it means, what to do): the summary split at its first `: ` outside backticks."""
    quoted = False
    for index, char in enumerate(summary):
        if char == "`":
            quoted = not quoted
        elif not quoted and summary.startswith(": ", index):
            return summary[:index], summary[index + 2 :]
    return summary, ""


def row(alert: Alert) -> str:
    meaning, action = split_summary(readable(alert.summary))
    hold = "0m" if alert.hold in ("0m", "0s") else alert.hold
    when = alert.expr.replace("|", "\\|")
    return f"| {alert.name} | `{when}` for {hold} | {alert.severity} | {meaning} | {action} |"


def alert_table(monitoring: MonitoringHost | None = None) -> str:
    """The Markdown table, between its markers."""
    rules = alerts(monitoring or example_monitoring())
    lines = [
        BEGIN,
        "| alert | fires when | severity | means | do |",
        "| --- | --- | --- | --- | --- |",
        *(row(alert) for alert in rules),
        END,
    ]
    return "\n".join(lines)


def readme_table(readme: str) -> str:
    """The table a README holds between the markers (ValueError without them)."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no alert table: the README needs the lines {BEGIN} and {END}")
    return readme[start : end + len(END)]


def main(argv: list[str]) -> int:
    """Print the table, or (given a README's path) write it in place between the markers."""
    if not argv:
        print(alert_table())
        return 0
    path = Path(argv[0])
    text = path.read_text()
    path.write_text(text.replace(readme_table(text), alert_table()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
