"""The fleet's known_hosts file: the SSH host keys `servekit cloud apply` pinned, for pyinfra.

The keys come from each instance's console output (servekit/cloud/hostkeys.py reads them there);
the inventory points pyinfra at this file with strict host key checking.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path


def known_hosts_lines(hosts: Iterable[tuple[str, int, Sequence[str]]]) -> list[str]:
    """OpenSSH known_hosts lines (`HOST TYPE BASE64`, `[HOST]:PORT` off port 22) for the keys."""
    lines = []
    for host, port, keys in hosts:
        name = host if port == 22 else f"[{host}]:{port}"
        lines += [f"{name} {key}" for key in keys]
    return lines


def write_known_hosts(path: Path, lines: Sequence[str]) -> None:
    """Write the file atomically, 0600 (it says which machines are trusted: no one else edits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write("".join(f"{line}\n" for line in lines))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
