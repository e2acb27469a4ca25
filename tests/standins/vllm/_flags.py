"""vLLM 0.33.0's `serve` command line, rebuilt with argparse from the recorded flag table.

The table (`_data/flags.json` in the wheel, `tests/data/vllm-0.33.0-flags.json` in the source
tree) was derived from the real `vllm serve --help=all`, so exactly the real flags, aliases,
`--no-`/`--disable-` forms, choices and nargs are accepted, and anything else fails as argparse
does in vLLM: usage line, `vllm serve: error: ...`, exit code 2.

vLLM's own pre-processing (FlexibleArgumentParser) is mirrored where it changes what parses:
`--flag_name` means `--flag-name`, `--config FILE.yaml` is expanded into flags placed before the
command line ones (so the command line wins), `--json-flag.key value` sets one key of a JSON flag
and `-O3` means `--optimization-level 3`.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

USAGE = "vllm serve [model_tag] [options]"
PROG = "vllm serve"
_PKG = Path(__file__).resolve().parent
_SOURCE_DATA = _PKG.parent.parent / "data"

# Flags whose values the stand-in reads, with the type vLLM gives them (others stay strings).
_INT_FLAGS = {
    "port",
    "master_port",
    "nnodes",
    "node_rank",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "max_num_seqs",
}
_FLOAT_FLAGS = {"gpu_memory_utilization"}


def _data_file(wheel_name: str, source_name: str) -> Path:
    packaged = _PKG / "_data" / wheel_name
    return packaged if packaged.exists() else _SOURCE_DATA / source_name


@lru_cache(maxsize=1)
def flag_table() -> list[dict[str, Any]]:
    """The recorded serve flags: names, takes_value, choices, many, optional_value."""
    path = _data_file("flags.json", "vllm-0.33.0-flags.json")
    flags: list[dict[str, Any]] = json.loads(path.read_text())["flags"]
    return flags


def help_text() -> str:
    """The real `vllm serve --help=all` output of 0.33.0."""
    return _data_file("serve-help.txt", "vllm-0.33.0-serve-help.txt").read_text()


def human_int(text: str) -> int:
    """vLLM's human-readable ints for --max-model-len: 1k=1000, 1K=1024, 25.6k, -1/auto."""
    value = text.strip()
    if value.lower() == "auto":
        return -1
    decimal = {"k": 10**3, "m": 10**6, "g": 10**9}
    binary = {"K": 2**10, "M": 2**20, "G": 2**30}
    if value and value[-1] in decimal:
        return int(float(value[:-1]) * decimal[value[-1]])
    if value and value[-1] in binary:
        return int(value[:-1]) * binary[value[-1]]
    return int(value)


class ServeArgumentParser(argparse.ArgumentParser):
    """argparse with vLLM's usage text; errors exit 2 with `vllm serve: error: ...`."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _dest(canonical: str) -> str:
    return canonical.lstrip("-").replace("-", "_")


def build_parser() -> ServeArgumentParser:
    """An argparse parser accepting exactly vLLM 0.33.0's serve flags."""
    parser = ServeArgumentParser(
        prog=PROG,
        usage=USAGE,
        add_help=False,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_tag", nargs="?", default=None)
    for flag in flag_table():
        names: list[str] = flag["names"]
        dest = _dest(names[0])
        if not flag["takes_value"]:
            positive = [names[0]] + [n for n in names[1:] if not n.startswith("--")]
            negative = [n for n in names[1:] if n.startswith("--")]
            parser.add_argument(*positive, dest=dest, action="store_true", default=None)
            if negative:
                parser.add_argument(*negative, dest=dest, action="store_false", default=None)
            continue
        kwargs: dict[str, Any] = {"dest": dest, "default": None}
        if flag["choices"]:
            kwargs["choices"] = flag["choices"]
        if flag["many"]:
            kwargs["nargs"] = "+"
        elif flag["optional_value"]:
            kwargs["nargs"] = "?"
            kwargs["const"] = True
        if dest in _INT_FLAGS:
            kwargs["type"] = int
        elif dest in _FLOAT_FLAGS:
            kwargs["type"] = float
        elif dest == "max_model_len":
            kwargs["type"] = human_int
        parser.add_argument(*names, **kwargs)
    return parser


def _value_flags() -> set[str]:
    return {n for f in flag_table() if f["takes_value"] for n in f["names"] if n.startswith("--")}


def _negative_alias(key: str) -> str | None:
    for flag in flag_table():
        if flag["names"][0] == f"--{key}" and not flag["takes_value"]:
            negs = [n for n in flag["names"][1:] if n.startswith("--")]
            return negs[0] if negs else None
    return None


def _normalise(args: list[str]) -> list[str]:
    """FlexibleArgumentParser's rewrites: underscores in long names, -O<n>, dotted JSON keys."""
    out: list[str] = []
    dotted: dict[str, dict[str, Any]] = {}
    value_flags = _value_flags()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        if arg.startswith("-O") and len(arg) > 2 and arg[2:].isdigit():
            out += ["--optimization-level", arg[2:]]
        elif arg.startswith("--"):
            name, eq, value = arg.partition("=")
            name = name.replace("_", "-")
            base, dot, key = name.partition(".")
            if dot and base in value_flags:
                if not eq:
                    i += 1
                    value = args[i] if i < len(args) else ""
                target = dotted.setdefault(base, {})
                *parents, leaf = key.split(".")
                for part in parents:
                    target = target.setdefault(part, {})
                try:
                    target[leaf] = json.loads(value)
                except ValueError:
                    target[leaf] = value
            else:
                out.append(f"{name}={value}" if eq else name)
        else:
            out.append(arg)
        i += 1
    for base, obj in dotted.items():
        out += [base, json.dumps(obj)]
    return out


def _config_args(path: str, parser: ServeArgumentParser) -> list[str]:
    """Turn a vLLM `--config` YAML into flags, as vLLM does (keys are long flag names)."""
    import yaml  # PyYAML, the stand-in's one dependency (vLLM needs it too)

    try:
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
    except OSError as exc:
        parser.error(f"argument --config: can't open '{path}': {exc.strerror}")
    except yaml.YAMLError as exc:
        parser.error(f"argument --config: invalid YAML in '{path}': {exc}")
    if not isinstance(config, dict):
        parser.error(f"argument --config: '{path}' must hold a mapping of option names")
    out: list[str] = []
    for raw_key, value in config.items():
        key = str(raw_key).replace("_", "-")
        flag = f"--{key}"
        if isinstance(value, bool):
            if value:
                out.append(flag)
            else:
                neg = _negative_alias(key)
                if neg:
                    out.append(neg)
                elif key not in _known_keys():
                    out.append(flag)  # unknown key: let argparse reject it
        elif isinstance(value, list):
            out.append(flag)
            out += [json.dumps(v) if isinstance(v, dict) else str(v) for v in value]
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        elif value is None:
            continue
        else:
            out += [flag, str(value)]
    return out


def _known_keys() -> set[str]:
    return {f["names"][0][2:] for f in flag_table()}


def _pull_config(args: list[str], parser: ServeArgumentParser) -> list[str]:
    """Expand `--config FILE`: file flags go before the command line ones, which then win."""
    path = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--config":
            if i + 1 >= len(args):
                parser.error("argument --config: expected one argument")
            path = args[i + 1]
            i += 2
            continue
        if args[i].startswith("--config="):
            path = args[i].split("=", 1)[1]
            i += 1
            continue
        rest.append(args[i])
        i += 1
    if path is None:
        return args
    config_args = _normalise(_config_args(path, parser))
    if rest and not rest[0].startswith("-"):
        return [rest[0], *config_args, *rest[1:]]
    return [*config_args, *rest]


def wants_help(args: list[str]) -> bool:
    return any(a in ("-h", "--help") or a.startswith("--help=") for a in args)


def parse_serve_args(args: list[str]) -> argparse.Namespace:
    """Parse `vllm serve` arguments (without the `serve` word) like vLLM 0.33.0 does."""
    parser = build_parser()
    if wants_help(args):
        sys.stdout.write(help_text())
        raise SystemExit(0)
    merged = _pull_config(_normalise(args), parser)
    ns = parser.parse_args(merged)
    return ns


def non_default(ns: argparse.Namespace) -> dict[str, Any]:
    """The options that were set, with secrets masked (never log an API key)."""
    out: dict[str, Any] = {}
    for key, value in sorted(vars(ns).items()):
        if value is None:
            continue
        if key in ("api_key", "hf_token"):
            value = "<redacted>"
        out[key] = value
    return out
