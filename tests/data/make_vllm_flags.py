"""Derive vLLM's serve flag surface from `vllm serve --help=all` into a JSON file.

Run: python tests/data/make_vllm_flags.py  (reads vllm-0.33.0-serve-help.txt beside it and writes
vllm-0.33.0-flags.json). Each entry: the long names (the first is the canonical one, later ones are
aliases such as `--no-x` or `-tp`), whether it takes a value, the choices when argparse lists them,
whether it takes several values (`nargs='+'`) and whether its value is optional (`nargs='?'`).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

HERE = Path(__file__).parent
HELP = HERE / "vllm-0.33.0-serve-help.txt"
OUT = HERE / "vllm-0.33.0-flags.json"

OPTION_LINE = re.compile(r"^  (-{1,2}[A-Za-z0-9][\w-]*.*)$")


def _choices(text: str) -> list[str] | None:
    text = text.strip()
    if text.startswith("{"):
        return text[1 : text.index("}")].split(",")
    if text.startswith("['"):
        return [str(c) for c in ast.literal_eval(text[: text.index("]") + 1])]
    return None


def parse(help_text: str) -> list[dict[str, object]]:
    flags: list[dict[str, object]] = []
    for line in help_text.splitlines():
        match = OPTION_LINE.match(line)
        if not match:
            continue
        header = re.split(r"\s{2,}", match.group(1), maxsplit=1)[0]
        names: list[str] = []
        takes_value = False
        optional_value = False
        choices: list[str] | None = None
        many = False
        for part in re.split(r", (?=-)", header):
            name, _, rest = part.partition(" ")
            names.append(name)
            if rest:
                takes_value = True
                choices = choices or _choices(rest)
                many = many or "..." in rest
                optional_value = optional_value or bool(re.fullmatch(r"\[[A-Z_]+\]", rest))
        if names == ["-h", "--help"]:
            continue
        flags.append(
            {
                "names": names,
                "takes_value": takes_value,
                "choices": choices,
                "many": many,
                "optional_value": optional_value,
            }
        )
    return flags


def main() -> None:
    flags = parse(HELP.read_text())
    OUT.write_text(json.dumps({"vllm": "0.33.0", "flags": flags}, indent=1) + "\n")
    print(f"{len(flags)} flags -> {OUT}")


if __name__ == "__main__":
    main()
