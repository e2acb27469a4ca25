"""Paths: data directories on the hosts, files on the control machine."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from servekit.errors import invalid
from servekit.fields.text import check_text, control_character

# Directories a data directory may never be: servekit chowns and fills it.
SYSTEM_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/local",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/share",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/tmp",
        "/var/cache",
        "/var/run",
        "/snap",
        "/Users",
        "/System",
        "/Library",
        "/Applications",
        "/private",
        "/Volumes",
    }
)


_HOST_PATH = re.compile(r"^/[A-Za-z0-9._/+@-]*$", re.ASCII)
# Kernel and runtime file systems: nothing of servekit's is kept inside them.
PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev", "/run")


def check_host_dir(value: str) -> str:
    """A directory on a managed host: absolute, normalised, not a system directory."""
    check_text(value)
    if not value.startswith("/") or posixpath.normpath(value) != value or value.startswith("//"):
        raise invalid(
            f"{value!r} is not an absolute, normalised path",
            "give an absolute path without '..', '.', '//' or a trailing '/', e.g. '/srv/models'",
        )
    if value in SYSTEM_DIRS:
        raise invalid(
            f"{value!r} is a system directory (servekit would take it over)",
            f"use a directory of its own below it, e.g. '{value.rstrip('/')}/servekit'",
        )
    if not _HOST_PATH.match(value):
        raise invalid(
            f"{value!r} contains a space, a shell character or a non-ASCII character",
            "use letters, digits, '.', '_', '-' and '/' in paths on hosts",
        )
    pseudo = next((d for d in PSEUDO_FILESYSTEMS if value.startswith(d + "/")), None)
    if pseudo is not None:
        raise invalid(
            f"{value!r} is inside {pseudo}, a kernel or runtime file system, not storage",
            "use a directory on a disk, e.g. '/srv/models'",
        )
    return value


HostDir = Annotated[str, AfterValidator(check_host_dir)]


def check_control_path(value: Path) -> Path:
    """A path on the machine running servekit (a key, a secret file): one line of text."""
    bad = control_character(str(value))
    if bad is not None or not str(value).strip():
        raise invalid(
            f"the path contains the control character {bad}" if bad else "the path is empty",
            "give the file's path on one line, e.g. '~/.config/servekit/engine.key'",
        )
    return value


ControlPath = Annotated[Path, AfterValidator(check_control_path)]
