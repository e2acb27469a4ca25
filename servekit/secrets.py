"""Read secrets on the machine running servekit, from the file or variable a fleet names.

One check, `load_secret`, used everywhere a secret is read: when pyinfra loads an inventory
(`fleet_secret_problems`, so `pyinfra ... --dry` refuses a broken secret before any connection)
and by the deploys (`read_secret`, `read_secret_lines`). A secret file must be a regular file
(a symlink to one is fine; not a device, FIFO or directory), owned by the user running servekit,
mode 0600 or 0400, at most 64 KiB (read with that cap), with a first line that is neither empty
nor a comment. An environment secret must be set, non-empty, and on one line.

`servekit plan` and `servekit render` do not read secrets (render writes placeholders): they work
on a machine that does not hold them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from servekit.errors import Problem
from servekit.fields import control_character

MAX_SECRET_BYTES = 64 * 1024
ALLOWED_MODES = (0o600, 0o400)


class SecretLike(Protocol):
    """A SecretRef (schema) or SecretSource (host plan): a file or an env variable."""

    @property
    def file(self) -> object: ...

    @property
    def env(self) -> str | None: ...


class SecretError(RuntimeError):
    """A secret could not be read; the message says where it was looked for and how to fix it."""

    def __init__(self, message: str, fix: str = "") -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message}; fix: {fix}" if fix else message)


def _create_hint(shown: str) -> str:
    return f"create it: (umask 077; printf '%s\\n' VALUE > {shown})"


def _file_lines(path: Path, structured: bool = False) -> list[str]:
    """The lines of a secret file, after every check of the module docstring."""
    return _secret_lines(str(path), _checked_text(path), structured)


def _checked_text(path: Path) -> str:
    data = _read_checked(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(
            f"secret file {path} is not UTF-8 text", _create_hint(str(path))
        ) from None


def _read_checked(path: Path) -> bytes:
    """The bytes of a regular file owned by this user, 0600 or 0400, at most MAX_SECRET_BYTES;
    the file opened is the file checked (a swap between the two is refused)."""
    shown, create = str(path), _create_hint(str(path))
    try:
        before = os.stat(path)  # follows a symlink: its target is what is checked
    except OSError as error:
        raise SecretError(f"cannot read secret file {shown}: {error.strerror}", create) from None
    if not stat.S_ISREG(before.st_mode):
        raise SecretError(
            f"secret file {shown} is not a regular file (a directory, device or FIFO)",
            "point the SecretRef at a plain file holding the secret",
        )
    try:
        # O_NONBLOCK: a FIFO swapped in after the check must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise SecretError(f"cannot read secret file {shown}: {error.strerror}", create) from None
    try:
        _check_open_file(shown, os.fstat(fd), before)
        data = _read_capped(fd)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(
            f"secret file {shown} is larger than {MAX_SECRET_BYTES // 1024} KiB",
            "point the SecretRef at the file that holds only the secret",
        )
    return data


def _check_open_file(shown: str, info: os.stat_result, before: os.stat_result) -> None:
    """The opened file is the one checked, is ours, private, and small enough for a secret."""
    if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (
        before.st_dev,
        before.st_ino,
    ):
        raise SecretError(f"secret file {shown} changed while read", "read it again")
    if info.st_uid != os.geteuid():
        raise SecretError(
            f"secret file {shown} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})",
            f"chown $(id -u) {shown}, or keep the secret in a file of your own",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode not in ALLOWED_MODES:
        raise SecretError(
            f"secret file {shown} has mode {mode:04o}; only 0600 or 0400 keep it from being "
            "read by others",
            f"chmod 600 {shown}",
        )
    if info.st_size > MAX_SECRET_BYTES:
        raise SecretError(
            f"secret file {shown} is larger than {MAX_SECRET_BYTES // 1024} KiB "
            f"({info.st_size} bytes): more than a secret",
            "point the SecretRef at the file that holds only the secret",
        )


def _read_capped(fd: int) -> bytes:
    """At most MAX_SECRET_BYTES + 1 bytes (one more tells a file that grew too large)."""
    data = b""
    while len(data) <= MAX_SECRET_BYTES:
        chunk = os.read(fd, MAX_SECRET_BYTES + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _secret_lines(shown: str, text: str, structured: bool) -> list[str]:
    """The non-empty, non-comment lines; the first line must hold the secret, and no line a
    control character."""
    lines = [line.strip() for line in text.split("\n")]
    if structured:  # a file with its own syntax (a netrc): its comments are its own
        lines = [line for line in lines if line and not line.startswith("#")] or [""]
    if not lines[0]:
        raise SecretError(f"secret file {shown} has an empty first line", _create_hint(shown))
    if lines[0].startswith("#"):
        raise SecretError(
            f"the first line of secret file {shown} is a comment; the secret would be the comment",
            "put the secret itself on the first line",
        )
    for number, line in enumerate(lines, 1):
        bad = control_character(line)
        if bad is not None:
            raise SecretError(
                f"line {number} of secret file {shown} holds the control character {bad}",
                "keep one secret a line, in plain text",
            )
    return [line for line in lines if line and not line.startswith("#")]


def _env_value(name: str) -> str:
    value = os.environ.get(name)
    if value is None or not value.strip():
        raise SecretError(
            f"environment variable {name} is {'unset' if value is None else 'empty'}",
            f"export {name}=... before running servekit, or use SecretRef(file=...)",
        )
    bad = control_character(value)
    if bad is not None:
        raise SecretError(
            f"environment variable {name} holds the control character {bad} (a newline?)",
            f"set {name} to the secret alone, on one line",
        )
    return value.strip()


def load_secret(source: SecretLike, structured: bool = False) -> list[str]:
    """The secret's lines (a variable is one line), after every check above; SecretError else.

    `structured`: the file has a syntax of its own (a netrc), so a leading comment is allowed;
    every other check holds."""
    if source.env:
        return [_env_value(source.env)]
    if source.file is None:
        raise SecretError("a secret names neither a file nor a variable", "give one of them")
    return _file_lines(Path(str(source.file)).expanduser(), structured)


def load_numbered_lines(source: SecretLike) -> list[tuple[int, str]]:
    """A structured secret's lines (`load_secret(structured=True)`, every check) with their
    line numbers in the file, so errors name the line a user sees (a variable is line 1)."""
    if source.env:
        return [(1, _env_value(source.env))]
    if source.file is None:
        raise SecretError("a secret names neither a file nor a variable", "give one of them")
    path = Path(str(source.file)).expanduser()
    text = _checked_text(path)
    kept = _secret_lines(str(path), text, structured=True)
    numbered = [
        (number, line.strip())
        for number, line in enumerate(text.split("\n"), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    assert [line for _number, line in numbered] == kept
    return numbered


def read_secret(source: SecretLike) -> str:
    """The secret's value (first line of the file, or the variable), never logged."""
    return load_secret(source)[0]


def read_secret_lines(source: SecretLike) -> list[str]:
    """All non-empty, non-comment lines (e.g. one client API key a line)."""
    return load_secret(source)


def secret_refs(value: object, path: str = "") -> Iterator[tuple[str, SecretLike]]:
    """Every SecretRef inside a schema object, with its field path."""
    from servekit.spec import SecretRef

    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from secret_refs(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from secret_refs(item, f"{path}[{index}]")


def _failure(ref: SecretLike, lines_needed: int, structured: bool) -> SecretError | None:
    try:
        lines = load_secret(ref, structured)
    except SecretError as error:
        return error
    if len(lines) < lines_needed:
        return SecretError(
            f"the secret ({ref.file or ref.env}) has {len(lines)} line(s), {lines_needed} needed",
            "put the access key id on the first line and the secret access key on the second",
        )
    return None


def fleet_secret_problems(fleet: BaseModel) -> list[Problem]:
    """Every secret a fleet names, checked on this machine: one Problem per broken secret,
    naming its field (engine_api_key, gateway.api_keys, sources.weights.token, ...)."""
    problems: list[Problem] = []
    seen: dict[tuple[object, str | None, int], SecretError | None] = {}
    for field, ref in secret_refs(fleet, ""):
        # S3 credentials: two lines, access key id then secret (the deploy reads both).
        needed = 2 if field.endswith("weights.credentials") else 1
        # a netrc and the gateway's keys file: files with comments of their own
        structured = field.endswith(("mirror_credentials", "gateway.api_keys"))
        key = (ref.file, ref.env, needed)
        if key not in seen:
            seen[key] = _failure(ref, needed, structured)
        failure = seen[key]
        if failure is not None:
            problems.append(Problem(field, failure.message, failure.fix))
    return problems
