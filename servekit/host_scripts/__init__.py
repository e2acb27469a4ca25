"""Small stdlib-only Python programs operations run on hosts (`python3 -c`), one round trip each.

They are data, not modules of servekit: `script(name)` returns a program's text. Inputs come as a
JSON argument (no secrets) or as JSON on standard input (secrets: never in argv, logs or files
other than the 0600 ones they write).
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def script(name: str) -> str:
    """The source of `host_scripts/<name>.py`."""
    return resources.files(__package__).joinpath(f"{name}.py").read_text(encoding="utf-8")
