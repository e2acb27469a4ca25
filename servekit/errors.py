"""Errors that stop servekit before it touches a host, each naming the field and the fix.

Raised while pyinfra loads an inventory, a FleetError is also one of pyinfra's PyinfraErrors, so
pyinfra prints the message alone (no traceback) and exits before connecting anywhere. servekit's
own commands never load pyinfra (it takes a fifth of a second to import): see `FleetError`.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a fleet: where (a dotted field path), what, and how to fix it."""

    field: str
    message: str
    fix: str = ""
    where: str = ""
    """FILE:LINE of the inventory statement that declared the value (when known)."""

    def __str__(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        if self.where:
            text += f" (declared at {self.where})"
        return f"{text}\n    fix: {self.fix}" if self.fix else text

    def at(self, prefix: str, where: str = "") -> Problem:
        """The same problem seen from an enclosing object: 'port' -> 'serve[1].port'."""
        return replace(self, field=join_path(prefix, self.field), where=self.where or where)


class FleetError(Exception):
    """A fleet declaration that cannot work.

    Once pyinfra is imported, a new FleetError is a `PyinfraFleetError`, a FleetError that is
    also a PyinfraError: pyinfra prints those without a traceback. Code that catches
    PyinfraError has imported pyinfra, so servekit need not import it to be caught.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> FleetError:
        if cls is FleetError and "pyinfra.api.exceptions" in sys.modules:
            cls = _pyinfra_fleet_error()
        return super().__new__(cls, *args, **kwargs)

    def __init__(
        self, problems: Sequence[Problem], fleet: str | None = None, where: str = ""
    ) -> None:
        self.problems = list(problems)
        self.fleet = fleet
        self.where = where
        head = f"fleet {fleet!r} cannot work" if fleet else "invalid fleet"
        if where:
            head += f" (declared at {where})"
        count = len(self.problems)
        lines = "\n".join(
            f"  - {p if p.where != where else replace(p, where='')}" for p in self.problems
        )
        super().__init__(f"{head} ({count} problem{'s' if count != 1 else ''}):\n{lines}")

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems]


@functools.cache
def _pyinfra_fleet_error() -> type[FleetError]:
    """FleetError's subclass that pyinfra treats as its own error (made once, when first used)."""
    from pyinfra.api.exceptions import PyinfraError

    class PyinfraFleetError(FleetError, PyinfraError):
        """A FleetError raised where pyinfra runs: it prints the message, not a traceback."""

        __qualname__ = "PyinfraFleetError"

    return PyinfraFleetError


def join_path(prefix: str, path: str) -> str:
    """('serve[1]', 'port') -> 'serve[1].port'; ('machines', '[0].gpu') -> 'machines[0].gpu'."""
    if not prefix:
        return path
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


_OWN_DIRS = (os.path.dirname(os.path.abspath(__file__)) + os.sep,)


def user_site(skip: tuple[str, ...] = ()) -> str:
    """FILE:LINE of the innermost caller outside servekit and the libraries it calls (pydantic,
    typing): the inventory line that built a value, for error messages."""
    frame = sys._getframe(1)
    own = _OWN_DIRS + skip
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (
            filename.startswith(own)
            or "/pydantic" in filename
            or filename.startswith("<frozen")
            or os.path.basename(filename) in ("typing.py", "runpy.py", "functools.py")
        ):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def field_path(loc: Iterable[int | str]) -> str:
    """('serve', 0, 'port') -> 'serve[0].port'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


_FIXES = {
    "missing": "add this field",
    "greater_than_equal": "use a larger value",
    "greater_than": "use a larger value",
    "less_than_equal": "use a smaller value",
    "less_than": "use a smaller value",
    "literal_error": "use one of the values listed",
    "string_pattern_mismatch": "use lower-case letters, digits and '-' (it names units and tags)",
    "int_parsing": "use a whole number",
    "too_short": "add at least one entry",
    "too_long": "shorten it",
    "string_too_short": "give a non-empty value",
    "string_too_long": "shorten it",
    "ip_v4_address": "give an IPv4 address such as '10.0.1.5'",
    "union_tag_invalid": "use one of the kinds listed",
    "union_tag_not_found": "build it with its class (SshHost(...), LocalHost(...), ...)",
    "model_type": "build it with its class, e.g. Gpu(model=...), not a plain value",
    "model_attributes_type": "build it with its class, e.g. Gpu(model=...), not a plain value",
    "dict_type": "build it with its class, not a plain value",
    "float_parsing": "use a number",
    "bool_parsing": "use True or False",
    "enum": "use one of the values listed",
}


def _problem(error: ErrorDetails, prefix: str, known_fields: dict[str, list[str]]) -> Problem:
    loc = error["loc"]
    kind = error["type"]
    # A discriminated union puts the chosen tag in the path ('machines.0.ssh.port'): drop it.
    path = field_path(part for part in loc if part not in ("ssh", "local", "aws", "function-after"))
    path = f"{prefix}.{path}" if prefix and path else prefix or path
    message = error["msg"].removeprefix("Value error, ")
    fix = _FIXES.get(kind, "")
    if kind == "extra_forbidden" and loc:
        name = str(loc[-1])
        parent_fields = known_fields.get(field_path(loc[:-1]), [])
        close = difflib.get_close_matches(name, parent_fields, n=1)
        message = f"unknown field {name!r}"
        fix = f"did you mean {close[0]!r}?" if close else "remove it (see servekit/spec/)"
    if " | fix: " in message:
        message, fix = message.split(" | fix: ", 1)
    if kind.endswith("_type") and not fix:
        fix = f"give a {kind.removesuffix('_type').replace('string', 'text')} value"
    return Problem(path, message, fix or "correct the value (servekit/spec/ gives its type)")


def from_validation_error(
    error: ValidationError, prefix: str = "", known_fields: dict[str, list[str]] | None = None
) -> FleetError:
    """Turn pydantic's error into a FleetError with one Problem per invalid field."""
    problems = [_problem(e, prefix, known_fields or {}) for e in error.errors()]
    return FleetError(problems)


def invalid(message: str, fix: str) -> ValueError:
    """A ValueError for a pydantic validator that carries its fix through to the Problem."""
    return ValueError(f"{message} | fix: {fix}")
