"""The `vllm` console script (entry point `vllm.entrypoints.cli.main:main`, as in real vLLM)."""

from __future__ import annotations

import sys

from ... import __version__

SUBCOMMANDS = ("chat", "complete", "serve", "bench", "collect-env", "run-batch")
TOP_USAGE = "usage: vllm [-h] [-v] {" + ",".join(SUBCOMMANDS) + "} ...\n"


def main(argv: list[str] | None = None) -> int:
    """Dispatch `vllm --version` and `vllm serve ...`; other sub-commands are not stood in."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(
            TOP_USAGE + "\nvLLM CLI\n\npositional arguments:\n  {" + ",".join(SUBCOMMANDS) + "}\n"
        )
        return 0
    if args[0] in ("-v", "--version"):
        print(__version__)
        return 0
    if args[0] == "serve":
        from ..._flags import parse_serve_args
        from ..._serve import run_serve

        return run_serve(parse_serve_args(args[1:]))
    if args[0] in SUBCOMMANDS:
        print(f"vllm {args[0]}: not available in servekit's stand-in vllm", file=sys.stderr)
        return 1
    sys.stderr.write(TOP_USAGE)
    choices = ", ".join(repr(c) for c in SUBCOMMANDS)
    sys.stderr.write(
        f"vllm: error: argument subparser: invalid choice: {args[0]!r} (choose from {choices})\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
