"""Run the `pyinfra` CLI as a user would, and read its `--json` report."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

PYINFRA = Path(sys.executable).with_name("pyinfra")


@dataclass
class PyinfraRun:
    """The outcome of one `pyinfra INVENTORY OPERATIONS... --json -y` run."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @cached_property
    def report(self) -> dict[str, Any]:
        """The JSON document pyinfra printed (`plan` and `results`)."""
        try:
            parsed: dict[str, Any] = json.loads(self.stdout)
        except json.JSONDecodeError as error:
            raise AssertionError(f"pyinfra printed no JSON:\n{self}") from error
        return parsed

    def changes(self) -> dict[str, list[str]]:
        """Operation name → hosts where it changed something (pyinfra's `success` list)."""
        operations = self.report["results"]["operations"]
        return {op["name"]: op["success"] for op in operations if op["success"]}

    def errors(self) -> dict[str, list[str]]:
        """Operation name → hosts where it failed."""
        operations = self.report["results"]["operations"]
        return {op["name"]: op["error"] for op in operations if op["error"]}

    def check(self) -> PyinfraRun:
        """Raise with pyinfra's output unless it succeeded on every host."""
        if self.returncode != 0 or self.report["results"]["failed_hosts"]:
            raise AssertionError(f"pyinfra failed:\n{self}")
        return self

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit code {self.returncode}\n"
            f"--- stderr ---\n{self.stderr[-20000:]}\n--- stdout ---\n{self.stdout[-5000:]}"
        )


def run_pyinfra(
    inventory: Path,
    *operations: str | Path,
    args: tuple[str, ...] = (),
    cwd: Path | None = None,
    timeout: float = 1200.0,
) -> PyinfraRun:
    """Run `pyinfra INVENTORY OPERATIONS... --json -y [args]` in `cwd` (default: the inventory's).

    pyinfra reads `config.py` and `group_data/` from its working directory, as for a user.
    """
    argv = [str(PYINFRA), str(inventory), *map(str, operations), "--json", "-y", *args]
    result = subprocess.run(
        argv,
        cwd=cwd or inventory.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return PyinfraRun(argv, result.returncode, result.stdout, result.stderr)
