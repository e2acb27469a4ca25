"""The one shell-quoting layer: every value a command builder puts into a POSIX shell command goes
through here, so a declared value is always one literal word, whatever it contains.

Builders write their fixed shell text by hand and pass every *value* (a version, a URL, a path, a
model name) to `quote`/`join`/`word`; shell variables the script itself sets (`$tmp`, `$have`)
are written with `var`. Messages that mix both are built with `word` and printed with `say`/`die`
(`printf '%s\\n'`, never `echo` of a double-quoted string: inside `"..."` the shell still runs
`$(...)` and backticks).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""Control characters (newline, carriage return, tab, escape, NUL...): never in a declared value
that reaches a line-oriented file (apt sources, netrc) or a single shell word."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SAFE = re.compile(r"^[\w@%+=:,./-]+$", re.ASCII)
"""Characters that mean themselves inside double quotes too (shlex leaves them unquoted)."""


class Raw(str):
    """Shell text inserted as it is (an expansion the script itself controls, like `"$tmp"`)."""


def quote(value: str) -> str:
    """One literal shell word for `value` (`shlex.quote`)."""
    return shlex.quote(str(value))


def join(argv: Iterable[str]) -> str:
    """A command line that runs exactly `argv` (each element one literal word)."""
    return " ".join(quote(arg) for arg in argv)


def var(name: str) -> Raw:
    """A double-quoted reference to a shell variable the script sets: `"$name"`."""
    if not _NAME.match(name):
        raise ValueError(f"not a shell variable name: {name!r}")
    return Raw(f'"${name}"')


def word(*parts: str) -> str:
    """One shell word made of literal parts (quoted) and `Raw` parts (as they are), adjacent:
    `word(var("tmp"), "/", asset)` is `"$tmp"'/''ollama-linux-amd64.tgz'`."""
    pieces: list[str] = []
    literal: list[str] = []

    def flush() -> None:
        text = "".join(literal)
        literal.clear()
        if pieces and pieces[-1].endswith('"') and _SAFE.match(text):
            pieces[-1] = pieces[-1][:-1] + text + '"'  # `"$tmp/x.tgz"`: nothing to expand
        else:
            pieces.append(quote(text))

    for part in parts:
        if isinstance(part, Raw):
            if literal:
                flush()
            pieces.append(part)
        else:
            literal.append(part)
    if literal or not pieces:
        flush()
    return "".join(pieces)


def say(*parts: str) -> str:
    """A command printing `servekit: <parts>` on stderr; values stay literal."""
    return f"printf '%s\\n' {word('servekit: ', *parts)} >&2"


def die(*parts: str) -> str:
    """A command group printing `servekit: <parts>` on stderr, then stopping the script."""
    return f"{{ {say(*parts)}; exit 1; }}"


def assignment(name: str, value: str) -> str:
    """`NAME=value` as one shell word (for `env NAME=value ...` or a prefix assignment)."""
    if not _NAME.match(name):
        raise ValueError(f"not an environment variable name: {name!r}")
    return f"{name}={quote(value)}"


def refuse_control(value: str, what: str) -> str:
    """`value` unchanged, or ValueError when it holds a control character (a newline would start
    a new line in a line-oriented file, or a new command in a shell)."""
    if CONTROL.search(value):
        raise ValueError(f"{what} contains a control character: {value!r}")
    return value


def poll_until_zero(count: str, timeout: int, late: str) -> str:
    """sh: run `count` (a command printing a number) every second until it prints 0; once
    `timeout` s have passed, print `servekit: <late>` and go on. `late` is fixed text (no
    declared value) and may use `$n`, the last count."""
    return (
        f"end=$(( $(date +%s) + {int(timeout)} )); "
        f'while n=$({count}); [ "$n" -gt 0 ]; do '
        f'if [ "$(date +%s)" -ge "$end" ]; then echo "servekit: {late}"; break; fi; '
        "sleep 1; done; "
    )
