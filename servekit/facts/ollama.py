"""Facts about Ollama on a host: the installed binary's version, the models its server holds, and
whether the service user can reach the data directory."""

from __future__ import annotations

import json

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit import ollama
from servekit.ollama import PathEntry


class OllamaVersion(FactBase[str | None]):
    """The version of the `ollama` binary at `binary` (the binary's own, whatever server runs),
    or None when there is none or it does not run."""

    @override
    def command(self, binary: str) -> StringCommand:
        # A port nothing listens on: `ollama -v` then prints only the client's version, at once.
        return StringCommand(
            "test -x", QuoteString(binary), "&&", "OLLAMA_HOST=127.0.0.1:1",
            QuoteString(binary), "-v", "2>&1", "||", "true",
        )  # fmt: skip

    @override
    def process(self, output: list[str]) -> str | None:
        return ollama.client_version(output)


class OllamaModels(FactBase[list[str] | None]):
    """The models an Ollama server holds, as `GET /api/tags` names them, or None when it does not
    answer (not installed, not running, no curl yet)."""

    @override
    def command(self, url: str) -> StringCommand:
        return StringCommand(
            "curl -fsS --max-time 10", QuoteString(f"{url}/api/tags"), "2>/dev/null", "||", "true"
        )

    @override
    def process(self, output: list[str]) -> list[str] | None:
        text = "\n".join(output).strip()
        if not text:
            return None
        try:
            tags = json.loads(text)
        except ValueError:
            return None
        models = tags.get("models") if isinstance(tags, dict) else None
        if not isinstance(models, list):
            return None
        return sorted(str(m.get("name") or m.get("model")) for m in models if isinstance(m, dict))


class DirectoryPath(FactBase[list[PathEntry]]):
    """Each existing directory above `path` (from `/`): its mode, owner and group (GNU stat)."""

    @override
    def command(self, path: str) -> StringCommand:
        dirs = ollama.parents(path) or ["/"]
        return StringCommand(
            "for d in", *map(QuoteString, dirs), "; do",
            '[ -d "$d" ] && stat -c "%a %U %G %n" "$d";',
            "done; true",
        )  # fmt: skip

    @override
    def process(self, output: list[str]) -> list[PathEntry]:
        entries: list[PathEntry] = []
        for line in output:
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[0].isdigit():
                mode, owner, group, path = parts
                entries.append({"path": path, "mode": int(mode, 8), "owner": owner, "group": group})
        return entries

    @staticmethod
    def default() -> list[PathEntry]:
        return []
