"""Small filesystem helpers: locks, mounts under a path, removal that stays on one filesystem."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing); other runs on the machine wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unescape_mountinfo(field: str) -> str:
    return field.encode().decode("unicode_escape")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (the order to unmount them in)."""
    root = os.path.realpath(path)
    found: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape_mountinfo(line.split()[4])
        if point == root or point.startswith(root + "/"):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_under(path: Path) -> None:
    """Unmount everything at or below `path`; a busy mount is detached lazily."""
    for point in mounts_under(path):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=True)


def remove_tree(path: Path) -> None:
    """Unmount what is below `path`, then delete it without crossing into other filesystems."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None when no such process exists.

    A PID together with its start time names one process even after the PID is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces, so split after its closing paren.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, waiting to be reaped: no longer running
        return None
    return int(fields[19])  # field 22: start time


def process_identity(pid: int) -> str:
    """`PID:STARTTIME` for a live process, the form stored in pid files."""
    return f"{pid}:{process_start_time(pid)}"


def identity_alive(identity: str) -> bool:
    """Whether the process written as `PID:STARTTIME` is still the same live process."""
    pid_text, _, start = identity.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    current = process_start_time(pid)
    return current is not None and str(current) == start
