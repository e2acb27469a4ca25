"""The `servekit` command imports only what a command uses: its help and an offline plan load
neither the bench client (aiohttp, httpx), nor boto3 and paramiko, nor pyinfra.

Each check runs in a fresh interpreter and reads `sys.modules` there: a behaviour, not a timing
(benchmarks/cli_startup.py times the start-up).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WATCHED = ("aiohttp", "httpx", "boto3", "botocore", "paramiko", "pyinfra")

COMMANDS = {
    "import servekit.cli": "import servekit.cli",
    "servekit --help": "from servekit.cli import app\napp(['--help'], prog_name='servekit')",
    "servekit plan INVENTORY": (
        "from servekit.cli import app\n"
        "app(['plan', 'inventories/single_a100.py'], prog_name='servekit')"
    ),
}


@functools.cache
def loaded_by(command: str) -> frozenset[str]:
    """The watched packages in `sys.modules` after `command` ran in a fresh interpreter."""
    program = "\n".join(
        [
            "import json, sys",
            "try:",
            textwrap.indent(COMMANDS[command], "    "),
            "except SystemExit as stop:",
            "    assert stop.code in (0, None), stop.code",
            f"print(json.dumps([name for name in {WATCHED!r} if name in sys.modules]))",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return frozenset(json.loads(done.stdout.splitlines()[-1]))


def cases() -> list[object]:
    found: list[object] = []
    for command in COMMANDS:
        for module in WATCHED:
            found.append(pytest.param(command, module, id=f"{command}-{module}"))
    return found


@pytest.mark.parametrize(("command", "module"), cases())
def test_command_does_not_load(command: str, module: str) -> None:
    assert module not in loaded_by(command)


def test_fleet_error_is_pyinfra_error_once_pyinfra_is_loaded() -> None:
    """servekit.errors does not import pyinfra; where pyinfra runs (it is imported then), a
    FleetError is one of its errors, which it prints without a traceback."""
    program = textwrap.dedent(
        """
        import sys
        from servekit.errors import FleetError, Problem
        assert "pyinfra" not in sys.modules
        before = FleetError([Problem("port", "too low")])
        from pyinfra.api.exceptions import PyinfraError
        after = FleetError([Problem("port", "too low")], fleet="f")
        assert not isinstance(before, PyinfraError)
        assert isinstance(after, PyinfraError) and isinstance(after, FleetError)
        assert after.fields == ["port"] and str(after).startswith("fleet 'f' cannot work")
        try:
            raise after
        except FleetError as caught:
            assert caught is after
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
