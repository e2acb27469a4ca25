"""The Ollama service user's data directory: never a system directory, and reachable by it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from servekit import shell
from servekit.ollama.layout import SERVICE_USER


class PathEntry(TypedDict):
    path: str
    mode: int
    owner: str
    group: str


SYSTEM_DIRS = frozenset(
    {
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
        "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys",
        "/tmp", "/usr", "/var", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/libexec",
        "/usr/local", "/usr/local/bin", "/usr/local/lib", "/usr/local/sbin", "/usr/local/share",
        "/usr/sbin", "/usr/share", "/usr/src", "/var/cache", "/var/lib", "/var/log", "/var/mail",
        "/var/opt", "/var/spool", "/var/tmp", "/var/www",
    }
)  # fmt: skip
"""Directories a deploy must never hand to the service user (`chown ollama`), whatever a plan says
(the schema refuses them at load too; this is the deploy's own guard)."""
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/run", "/sbin", "/sys")
"""Trees no part of which is a data directory."""


def data_dir_problem(path: str) -> str | None:
    """Why `path` must not become the service user's data directory (owned by it), or None:
    not absolute, not normalised, a system directory, or inside a system tree."""
    if not path.startswith("/") or shell.CONTROL.search(path):
        return f"{path!r} is not an absolute path"
    parts = path.split("/")[1:]
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        return f"{path!r} is not a normalised path (no '//', '.', '..' or trailing '/')"
    if path in SYSTEM_DIRS:
        return f"{path} is a system directory: servekit never gives it to the {SERVICE_USER} user"
    if any(path.startswith(tree + "/") for tree in SYSTEM_TREES):
        return f"{path} is inside a system directory: choose a data directory such as /srv/ollama"
    return None


def parents(path: str) -> list[str]:
    """`/a/b/c` → [`/a`, `/a/b`]: the directories a process must traverse to reach `path`."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts) - 1)]


def untraversable(entries: Iterable[PathEntry], user: str, groups: Iterable[str]) -> list[str]:
    """Directories the service user cannot enter (no x bit for it as owner, group or other)."""
    member = set(groups)
    blocked = []
    for entry in entries:
        mode = entry["mode"]
        if entry["owner"] == user:
            allowed = bool(mode & 0o100)
        elif entry["group"] in member:
            allowed = bool(mode & 0o010)
        else:
            allowed = bool(mode & 0o001)
        if not allowed:
            blocked.append(entry["path"])
    return blocked
