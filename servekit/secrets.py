"""Read secrets on the machine running servekit, from the file or variable a fleet names."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from servekit.hostplan import SecretSource


class SecretError(RuntimeError):
    """A secret could not be read; the message says where it was looked for and how to fix it."""


def read_secret(source: SecretSource) -> str:
    """The secret's value (first line of the file, or the variable), never logged."""
    if source.env:
        value = os.environ.get(source.env, "").strip()
        if not value:
            raise SecretError(f"environment variable {source.env} is empty or unset")
        return value
    assert source.file is not None
    path = Path(source.file).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SecretError(
            f"cannot read secret file {path}: {error.strerror}; create it with mode 0600"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"secret file {path} is readable by others: chmod 600 {path}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise SecretError(f"secret file {path} is empty")
    return lines[0]


def read_secret_lines(source: SecretSource) -> list[str]:
    """All non-empty lines (e.g. one client API key a line)."""
    if source.env:
        return [read_secret(source)]
    first = read_secret(source)
    assert source.file is not None
    lines = Path(source.file).expanduser().read_text(encoding="utf-8").splitlines()
    return [first, *[line.strip() for line in lines if line.strip()][1:]]
