"""Text on one line: no character that ends a line for some reader."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from servekit.errors import invalid

# C0 controls, DEL, C1 controls (U+0085 NEL among them) and the Unicode line/paragraph separators:
# each can end a line for some reader (systemd, a shell, Python's splitlines, a YAML parser).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_character(value: str) -> str | None:
    """The first control character in `value`, spelled out (None when there is none)."""
    found = _CONTROL.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


def check_text(value: str) -> str:
    """Free text: anything printable on one line."""
    bad = control_character(value)
    if bad is not None:
        raise invalid(
            f"contains the control character {bad} (a newline or similar)",
            "write the value on one line, without control characters",
        )
    return value


Text = Annotated[str, AfterValidator(check_text)]
