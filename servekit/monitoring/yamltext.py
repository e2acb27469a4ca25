"""A small YAML writer for the monitoring files: block style, every string a JSON string (a
valid YAML double-quoted scalar), so no value from the fleet can change the file's structure."""

from __future__ import annotations

import json
import re

Value = str | int | float | bool | None | list["Value"] | dict[str, "Value"]
PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
YAML_WORDS = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
"""Plain words YAML 1.1 reads as booleans or null: quoted when they are keys."""


def scalar(value: Value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "".join(_printable(c) for c in json.dumps(value, ensure_ascii=False))
    if value == [] or value == {}:
        return "[]" if isinstance(value, list) else "{}"
    raise TypeError(f"not a scalar: {value!r}")


def _printable(char: str) -> str:
    """A character YAML allows in a file as is, else its `\\uXXXX` escape (YAML 1.1 5.1;
    NEL and the Unicode line separators too: YAML folds them as line breaks)."""
    code = ord(char)
    allowed = (
        char in "\t\n\r"
        or 0x20 <= code <= 0x7E
        or (0xA0 <= code <= 0xD7FF and code not in (0x2028, 0x2029))
        or 0xE000 <= code <= 0xFFFD
        or code >= 0x10000
    )
    if allowed:
        return char
    return f"\\u{code:04x}"


def _is_block(value: Value) -> bool:
    return isinstance(value, list | dict) and bool(value)


def _key(key: str) -> str:
    plain = PLAIN_KEY.fullmatch(key) and key.lower() not in YAML_WORDS
    return key if plain else scalar(key)


def _lines(value: Value, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_block(item):
                lines += [f"{pad}{_key(key)}:", *_lines(item, indent + 2)]
            else:
                lines.append(f"{pad}{_key(key)}: {scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if _is_block(item):
                inner = _lines(item, indent + 2)
                lines += [f"{pad}- {inner[0].lstrip()}", *inner[1:]]
            else:
                lines.append(f"{pad}- {scalar(item)}")
    else:
        lines.append(pad + scalar(value))
    return lines


def dump(value: Value, header: str = "") -> str:
    """`value` as a YAML document, after `header` (comment lines, each starting with `#`)."""
    return header + "\n".join(_lines(value, 0)) + "\n"
