"""How long does the `servekit` command take to start? Prints a table and the costliest imports.

Goal (issue 12): `servekit --help` and an offline `servekit plan inventories/single_a100.py`
each take at most 0.3 s of wall time on a 2-core machine: the median, absolute, with
`python -c pass` (the interpreter's own start) beside it for reference. A command imports
only what it uses: the bench client's aiohttp, boto3, paramiko and pyinfra are for the commands
that talk to servers and clouds.

Each command runs `--repeats` times in a fresh process, both as the installed console script
(next to this Python) and as `python -m servekit.cli`; its CPU time (user + system) is given
beside the wall time, as it moves less when other work shares the machine. The imports are
measured with `python -X importtime` and summed per top-level package (the time spent in its
own modules).

    .venv/bin/python benchmarks/cli_startup.py [--repeats 10] [--top 12] [--check]

`--check` exits 1 when a goal is missed. Not a test: timings move with the machine's load.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INVENTORY = "inventories/single_a100.py"
GOAL_S = 0.3
PYTHON = sys.executable
SCRIPT = str(Path(PYTHON).with_name("servekit"))
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def commands() -> list[tuple[str, list[str], bool]]:
    """(label, argv, held to the goal) for each measured command."""
    module = [PYTHON, "-m", "servekit.cli"]
    return [
        ("python -c pass", [PYTHON, "-c", "pass"], False),
        ("servekit --help", [SCRIPT, "--help"], True),
        ("python -m servekit.cli --help", [*module, "--help"], False),
        (f"servekit plan {INVENTORY}", [SCRIPT, "plan", INVENTORY], True),
        (f"python -m servekit.cli plan {INVENTORY}", [*module, "plan", INVENTORY], False),
    ]


def run_times(argv: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (user + system) of `repeats` runs, after one untimed run that warms
    the file cache. CPU time moves less than wall time when other work shares the machine."""
    env = {**os.environ, "COLUMNS": "100"}
    walls, cpus = [], []
    for run in range(repeats + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr.decode()[-2000:]}")
        if run:
            walls.append(elapsed)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return walls, cpus


def import_costs(args: list[str]) -> tuple[dict[str, float], float]:
    """Milliseconds of import per top-level package for `python -X importtime ARGS`, and all."""
    done = subprocess.run(
        [PYTHON, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    per_package: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for line in done.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match is None:
            continue
        own_us, cumulative_us, indent, name = match.groups()
        per_package[name.split(".")[0]] += int(own_us) / 1000
        if not indent:  # a module imported by the command itself: the total includes it once
            total += int(cumulative_us) / 1000
    return per_package, total


def print_timings(repeats: int) -> list[str]:
    """The timing table; returns the goals missed."""
    python = sys.version.split()[0]
    print(f"## wall time, {repeats} runs each ({os.cpu_count()} cores, Python {python})")
    print()
    print("| command | median | min | median - `python -c pass` | CPU median |")
    print("|---|---|---|---|---|")
    baseline = None
    missed = []
    for label, argv, held in commands():
        times, cpus = run_times(argv, repeats)
        median = statistics.median(times)
        baseline = median if baseline is None else baseline
        extra = f"{(median - baseline) * 1000:+.0f} ms" if label != "python -c pass" else ""
        cpu = statistics.median(cpus)
        print(
            f"| `{label}` | {median * 1000:.0f} ms | {min(times) * 1000:.0f} ms | {extra} "
            f"| {cpu * 1000:.0f} ms |"
        )
        if held and median > GOAL_S:
            missed.append(f"{label}: median {median:.2f} s > {GOAL_S} s")
    print()
    return missed


def print_imports(top: int) -> None:
    for label, args in (
        ("servekit --help", ["-m", "servekit.cli", "--help"]),
        (f"servekit plan {INVENTORY}", ["-m", "servekit.cli", "plan", INVENTORY]),
    ):
        per_package, total = import_costs(args)
        costliest = sorted(per_package.items(), key=lambda item: -item[1])[:top]
        print(f"## imports of `{label}`: {total:.0f} ms in all (`-X importtime`, one run)")
        print()
        print(", ".join(f"{name} {ms:.0f} ms" for name, ms in costliest))
        print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs per command")
    parser.add_argument("--top", type=int, default=12, help="packages listed per command")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    options = parser.parse_args()
    missed = print_timings(options.repeats)
    print_imports(options.top)
    for goal in missed:
        print(f"goal missed: {goal}")
    if not missed:
        print(f"goal met: both commands within {GOAL_S} s (median)")
    return 1 if missed and options.check else 0


if __name__ == "__main__":
    sys.exit(main())
