"""Shared machinery of servekit's operations: the host's state read once, what a dry run
lists, and commands that run servekit's host programs (secrets on standard input, progress shown
as it comes).

pyinfra runs each operation at execute time, one after another on a host and in lock-step across
hosts. Reading a fact per file, unit and marker would cost a round trip each; instead the first
operation that needs the host's state reads all of it with one `HostState` fact, kept in this
run's record (`servekit.operations.runstate`), and every operation that changes the host marks
that reading stale, so the next one reads again. A run that changes nothing therefore costs one
command per host.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from pyinfra import logger
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.command import FunctionCommand, QuoteString, StringCommand
from pyinfra.context import host

from servekit.facts.vllm import HostState
from servekit.host_scripts import script
from servekit.operations.runstate import this_host
from servekit.render import RenderedFile

EMPTY_STATE: dict[str, Any] = {
    "python": None, "packages": {}, "user": None, "paths": {}, "read": {}, "globs": {},
    "run": {}, "units": {}, "health": {}, "interfaces": {},
}  # fmt: skip
"""What a host without python3 reports (the packages step installs it)."""


def view(spec: dict[str, Any]) -> dict[str, Any]:
    """The host's state for `spec` (see `inspect_host.py`), read at most once until it changes."""
    text = json.dumps(spec, sort_keys=True)
    views = this_host().views
    if text not in views:
        found = host.get_fact(HostState, spec=text)
        views[text] = {**EMPTY_STATE, **found}
    return views[text]


def stale() -> None:
    """The host changed: the next `view()` reads it again."""
    this_host().views.clear()


def announce(*changes: str) -> None:
    """Say, per host, what an operation is about to change ("write /etc/vllm/x.yaml", "restart
    vllm-x.service"), in the pass that only detects changes: the listing of `pyinfra --dry` and
    of the confirmation prompt. Call it before the operation's first command (that pass stops
    there); the execution pass adds nothing to pyinfra's own output."""
    if host.state.is_executing:
        return
    for change in changes:
        host.log(f"will {change}", logger.info)


def connector_arguments() -> dict[str, Any]:
    """The current operation's connector arguments (`_sudo`, ...), for commands run by hand."""
    arguments: dict[str, Any] = dict(host.current_op_global_arguments or {})
    return {k: v for k, v in arguments.items() if k in CONNECTOR_ARGUMENT_KEYS}


def python_command(name: str, *args: str, python: str = "python3") -> StringCommand:
    """`python -c <host_scripts/name.py> ARGS...`."""
    return StringCommand(python, "-c", QuoteString(script(name)), *(QuoteString(a) for a in args))


def stdin_json(data: Any) -> str:
    return json.dumps(data) + "\n"


def streamed(
    command: StringCommand,
    stdin: str | None = None,
    sink: list[str] | None = None,
    outcome: dict[str, bool] | None = None,
) -> FunctionCommand:
    """Run `command` printing its output as it arrives (progress of long steps), `stdin` fed
    to it unseen. Its output lines are appended to `sink` when given. A failure fails the
    operation, unless `outcome` is given: then `outcome["ok"]` says how it went."""

    def run(state: Any, host: Any, connector: dict[str, Any]) -> bool:
        arguments: dict[str, Any] = dict(connector)
        if stdin is not None:
            arguments["_stdin"] = stdin
        ok, output = host.run_shell_command(command, print_output=True, **arguments)
        if sink is not None:
            sink.extend(line.line for line in output.combined_lines)
        if outcome is not None:
            outcome["ok"] = bool(ok)
            return True
        return bool(ok)

    return FunctionCommand(run, (connector_arguments(),), {})


def file_entry(rendered: RenderedFile) -> dict[str, str]:
    return {
        "path": rendered.path,
        "content": base64.b64encode(rendered.content.encode()).decode(),
        "mode": rendered.mode,
        "user": rendered.user,
        "group": rendered.group,
    }


def apply_files(job: dict[str, Any]) -> StringCommand:
    """Write files (and keep, restore or drop rollback copies) with `apply_files.py`, one round
    trip; the contents travel on standard input, never in the command line."""
    return StringCommand(python_command("apply_files"), _stdin=stdin_json(job))


def differs(rendered: RenderedFile, current: dict[str, Any] | None) -> bool:
    """Whether the host's file differs from the rendered one (content, mode or owner)."""
    if current is None or current.get("type") != "file":
        return True
    digest = hashlib.sha256(rendered.content.encode()).hexdigest()
    return (
        current.get("sha256") != digest
        or current.get("mode") != rendered.mode
        or current.get("user") != rendered.user
        or current.get("group") != rendered.group
    )
