"""Client API keys for the gateway, parsed from the `api_keys` secret's lines:

    name key [models=a,b] [rpm=N] [concurrent=N]

Only the key's sha256 is kept. Errors name the line and the field, never the key."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from servekit.hostplan import SecretSource
from servekit.secrets import SecretError, load_numbered_lines

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
KEY = re.compile(r"[\x21-\x7e]{16,256}")
QUOTES = set("\"'`")
LIMIT = re.compile(r"[1-9][0-9]{0,8}")


class KeysError(SecretError):
    """The gateway's keys file is malformed (the message names the line and the field)."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    concurrent: int | None = None


def _fail(number: int, what: str) -> KeysError:
    return KeysError(
        f"gateway keys file, line {number}: {what}",
        "each line: name key [models=a,b] [rpm=N] [concurrent=N]",
    )


def _key(number: int, value: str) -> str:
    if not KEY.fullmatch(value) or QUOTES & set(value):
        raise _fail(number, "field key: 16 to 256 printable characters, no spaces or quotes")
    return hashlib.sha256(value.encode()).hexdigest()


def _option(number: int, word: str, served: set[str], seen: dict[str, str]) -> None:
    field, sep, value = word.partition("=")
    if not sep or field not in ("models", "rpm", "concurrent"):
        raise _fail(number, "unknown field (expected models=, rpm= or concurrent=)")
    if field in seen:
        raise _fail(number, f"field {field} given twice")
    if field == "models":
        if not value:
            raise _fail(number, "field models: an empty list")
        unknown = sorted({n for n in value.split(",") if n not in served})
        if unknown:
            shown = ", ".join(repr(n) for n in unknown[:3])
            raise _fail(number, f"field models: {shown} not served by the fleet")
    elif not LIMIT.fullmatch(value):
        raise _fail(number, f"field {field}: a whole number from 1")
    seen[field] = value


def parse_line(number: int, line: str, served: set[str]) -> ApiKey:
    words = line.split()
    if len(words) < 2:
        raise _fail(number, "expected a name and a key")
    if not NAME.fullmatch(words[0]):
        raise _fail(number, "field name: [a-z0-9][a-z0-9_-]{0,62}")
    sha = _key(number, words[1])
    seen: dict[str, str] = {}
    for word in words[2:]:
        _option(number, word, served, seen)
    models = tuple(dict.fromkeys(seen["models"].split(","))) if "models" in seen else None
    rpm = int(seen["rpm"]) if "rpm" in seen else None
    concurrent = int(seen["concurrent"]) if "concurrent" in seen else None
    return ApiKey(words[0], sha, models, rpm, concurrent)


def parse_keys(
    lines: Iterable[str] | Iterable[tuple[int, str]], served: Iterable[str]
) -> list[ApiKey]:
    """The keys of the secret's lines (comments and blank lines skipped), each line alone or
    with its number in the file (`secrets.load_numbered_lines`; else counted from 1);
    `served`: the model names the fleet serves. Duplicate names or keys are refused."""
    names = set(served)
    keys: list[ApiKey] = []
    for index, entry in enumerate(lines, 1):
        number, raw = entry if isinstance(entry, tuple) else (index, entry)
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = parse_line(number, line, names)
        if any(k.name == key.name for k in keys):
            raise _fail(number, f"field name: {key.name!r} given twice")
        if any(k.sha256 == key.sha256 for k in keys):
            raise _fail(number, "field key: the same key as an earlier line")
        keys.append(key)
    if not keys:
        raise KeysError("the gateway keys file holds no key", "add a line: name key")
    return keys


def keys_summary(api_keys: SecretSource, served: Iterable[str]) -> str:
    """What `servekit plan` says of the clients' keys: how many, how many limited, never a key
    (or why the file is not usable yet: the gateway deploy would stop on it)."""
    try:
        keys = parse_keys(load_numbered_lines(api_keys), served)
    except SecretError as error:
        return f"keys: {api_keys.describe()}: not usable: {error}"
    limited = sum(1 for k in keys if k.models is not None or k.rpm or k.concurrent)
    clients = f"{len(keys)} client{'s' if len(keys) != 1 else ''}"
    return f"keys: {clients} ({limited} with limits), from {api_keys.describe()}"
