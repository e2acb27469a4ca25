"""`python -m vllm.entrypoints.openai.api_server --model M ...`: the entry point before `serve`."""

from __future__ import annotations

import sys

from ..._flags import parse_serve_args
from ..._serve import run_serve


def main(argv: list[str] | None = None) -> int:
    """Same flags as `vllm serve`, model given with `--model`."""
    return run_serve(parse_serve_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
