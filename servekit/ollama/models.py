"""Ollama's models through its API, from the host itself: pull (streamed, every line checked),
delete, and which ones a sync changes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from servekit import catalog, shell
from servekit.ollama.layout import PULL_STALL_S


def normalise(name: str) -> str:
    """A model name as Ollama compares them: `llama3.2` is `llama3.2:latest`."""
    return catalog.normalise_ollama_tag(name)


# Reads Ollama's NDJSON pull stream line by line (POSIX awk: mawk, gawk, macOS's BSD awk): every
# line is checked for an "error" field (Ollama reports failures that way after HTTP 200), progress
# is printed per status and per 10 %, and the pull counts only if it ends with "success".
PULL_AWK = r"""
function str(key,   re, s) {
    re = "\"" key "\":\"([^\"\\\\]|\\\\.)*\""
    if (!match($0, re)) return ""
    s = substr($0, RSTART + length(key) + 4, RLENGTH - length(key) - 5)
    gsub(/\\"/, "\"", s)
    return s
}
function num(key,   re) {
    re = "\"" key "\":[0-9]+"
    if (!match($0, re)) return -1
    return substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3) + 0
}
function size(n) {
    if (n >= 1e9) return sprintf("%.1f GB", n / 1e9)
    if (n >= 1e6) return sprintf("%.0f MB", n / 1e6)
    if (n >= 1e3) return sprintf("%.0f KB", n / 1e3)
    return sprintf("%d B", n)
}
function say(text) { print model ": " text; fflush() }
/^servekit-curl-exit=/ {
    code = substr($0, 20) + 0
    if (code != 0 && !failed) {
        say("error: the pull from " url " broke off (curl exit " code ")")
        failed = 1
    }
    next
}
/^[ \t]*\{/ {
    if ($0 ~ /"error"[ \t]*:/) {
        text = str("error")
        if (text == "") text = $0
        say("error: " text)
        failed = 1
        next
    }
    status = str("status")
    total = num("total")
    done = num("completed")
    if (status == "success") ok = 1
    if (total > 0) {
        if (done < 0) done = 0
        step = int(done * 10 / total)
        if (status != last || step != laststep) {
            say(sprintf("%s %d%% of %s", status, step * 10, size(total)))
            last = status
            laststep = step
        }
    } else if (status != "" && status != last) {
        say(status)
        last = status
        laststep = -1
    }
    next
}
NF { say($0) }
END {
    if (failed) exit 1
    if (!ok) { say("error: the pull ended without success"); exit 1 }
}
"""


def pull_command(model: str, url: str, stall_s: int = PULL_STALL_S) -> str:
    """Pull `model` through `POST /api/pull` (streamed) on the host, printing progress lines
    `MODEL: ...`; fails with `MODEL: error: ...` on any error line, a broken stream, or no
    `success`."""
    q = shell.quote
    body = json.dumps({"model": model, "stream": True})
    curl = (
        f"curl -sS -N --connect-timeout 10 --speed-limit 1 --speed-time {int(stall_s)} "
        f"-H 'Content-Type: application/json' --data-binary {q(body)} {q(url + '/api/pull')}"
    )
    return (
        f'{{ {curl}; echo "servekit-curl-exit=$?"; }} 2>&1 | '
        f"awk -v model={q(model)} -v url={q(url)} {q(PULL_AWK.strip())}"
    )


def delete_command(model: str, url: str) -> str:
    """Delete `model` through `DELETE /api/delete`."""
    q = shell.quote
    body = json.dumps({"model": model})
    return (
        "curl -fsS --max-time 60 -X DELETE -H 'Content-Type: application/json' "
        f"--data-binary {q(body)} {q(url + '/api/delete')}"
    )


@dataclass(frozen=True)
class ModelChanges:
    """What a model sync does: pull the missing declared models, delete the undeclared ones."""

    pull: list[str]
    delete: list[str]


def model_changes(declared: Sequence[str], present: Iterable[str], prune: bool) -> ModelChanges:
    """Compare by Ollama's normalised names; keep the declared order for pulls."""
    have = {normalise(name): name for name in present}
    wanted = list(dict.fromkeys(normalise(name) for name in declared))
    pull = [name for name in wanted if name not in have]
    delete = sorted(have[n] for n in have if n not in wanted) if prune else []
    return ModelChanges(pull, delete)
