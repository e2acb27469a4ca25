"""Facts about a Mac reached over SSH or `@local`: Homebrew (on its real path), a LaunchAgent in
the login user's GUI session, and the Ollama app.

An SSH session's PATH is `/usr/bin:/bin:/usr/sbin:/sbin`: Homebrew's `/opt/homebrew/bin` (Apple
silicon) or `/usr/local/bin` (Intel) is not on it, so Homebrew is looked for by path.
"""

from __future__ import annotations

import shlex
from typing import TypedDict

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.facts import FactBase
from typing_extensions import override

HOMEBREW_PREFIXES = ("/opt/homebrew", "/usr/local")
"""Where Homebrew installs itself: Apple silicon first, then Intel."""


class HomebrewState(TypedDict):
    prefix: str
    brew: str
    ollama_versions: list[str]
    ollama_service_loaded: bool


class Homebrew(FactBase[HomebrewState | None]):
    """Homebrew's prefix and `brew` path, the versions of its `ollama` formula in the Cellar, and
    whether `brew services` runs that formula in this user's GUI session; None without Homebrew."""

    @override
    def command(self) -> StringCommand:
        prefixes = " ".join(HOMEBREW_PREFIXES)
        return StringCommand(
            f"for p in {prefixes}; do",
            'if [ -x "$p/bin/brew" ]; then echo "prefix=$p";',
            'for v in "$p"/Cellar/ollama/*; do [ -d "$v" ] && echo "formula=${v##*/}"; done;',
            "break; fi; done;",
            'launchctl print "gui/$(id -u)/homebrew.mxcl.ollama" >/dev/null 2>&1',
            '&& echo "service=loaded"; true',
        )

    @override
    def process(self, output: list[str]) -> HomebrewState | None:
        fields: dict[str, list[str]] = {}
        for line in output:
            key, sep, value = line.strip().partition("=")
            if sep:
                fields.setdefault(key, []).append(value)
        if "prefix" not in fields:
            return None
        prefix = fields["prefix"][0]
        return {
            "prefix": prefix,
            "brew": f"{prefix}/bin/brew",
            "ollama_versions": sorted(fields.get("formula", [])),
            "ollama_service_loaded": fields.get("service") == ["loaded"],
        }


class AgentState(TypedDict):
    uid: int | None
    session: str | None
    loaded: bool
    state: str | None
    pid: int | None
    path: str | None
    program: str | None
    disabled: bool


class LaunchAgent(FactBase[AgentState]):
    """A LaunchAgent `label` in the login user's GUI session (`gui/<uid>`): whether that session
    exists (someone logged in at the screen), the service is loaded, its state and pid, the plist
    it came from, and whether `launchctl disable` turned it off."""

    @override
    def command(self, label: str) -> StringCommand:
        return StringCommand(
            'uid=$(id -u); echo "uid=$uid";',
            'if launchctl print "gui/$uid" >/dev/null 2>&1; then echo "session=gui/$uid"; fi;',
            'launchctl print-disabled "gui/$uid" 2>/dev/null | grep -F',
            QuoteString(f'"{label}"'),
            "|| true;",
            f'launchctl print "gui/$uid"/{shlex.quote(label)} 2>/dev/null || true',
        )

    @override
    def process(self, output: list[str]) -> AgentState:
        return parse_launch_agent(output)

    @staticmethod
    def default() -> AgentState:
        return empty_agent()


def empty_agent() -> AgentState:
    return {
        "uid": None,
        "session": None,
        "loaded": False,
        "state": None,
        "pid": None,
        "path": None,
        "program": None,
        "disabled": False,
    }


def parse_launch_agent(output: list[str]) -> AgentState:
    """Read the fact's output: `uid=`, `session=`, the `print-disabled` line for the label and
    `launchctl print` of the service (its top-level `key = value` lines, one tab deep)."""
    agent = empty_agent()
    in_service = False
    for raw in output:
        line = raw.rstrip("\n")
        stripped = line.strip()
        if stripped.startswith("uid=") and stripped[4:].isdigit():
            agent["uid"] = int(stripped[4:])
        elif stripped.startswith("session="):
            agent["session"] = stripped.removeprefix("session=") or None
        elif stripped.startswith('"') and "=>" in stripped:
            # `"label" => disabled` (macOS 11+) or `=> true` (older): the service is turned off.
            verdict = stripped.split("=>", 1)[1].strip()
            agent["disabled"] = verdict in ("disabled", "true")
        elif not line.startswith(("\t", " ")) and stripped.endswith("= {"):
            in_service = True
            agent["loaded"] = True
        elif in_service and line.startswith("\t") and not line.startswith("\t\t"):
            key, sep, value = stripped.partition(" = ")
            if not sep:
                continue
            if key == "state":
                agent["state"] = value
            elif key == "pid" and value.isdigit():
                agent["pid"] = int(value)
            elif key == "path":
                agent["path"] = value
            elif key == "program":
                agent["program"] = value
    return agent


class OllamaAppState(TypedDict):
    installed: bool
    running: bool


class OllamaApp(FactBase[OllamaAppState]):
    """Whether the Ollama desktop app is installed in /Applications and running (it starts its
    own server on port 11434 at login)."""

    @override
    def command(self) -> str:
        return (
            "[ -d /Applications/Ollama.app ] && echo installed; "
            "pgrep -x Ollama >/dev/null 2>&1 && echo running; true"
        )

    @override
    def process(self, output: list[str]) -> OllamaAppState:
        words = {line.strip() for line in output}
        return {"installed": "installed" in words, "running": "running" in words}

    @staticmethod
    def default() -> OllamaAppState:
        return {"installed": False, "running": False}
