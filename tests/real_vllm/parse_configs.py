"""Parse `vllm serve --config FILE` for each FILE with vLLM's own argument parser (run inside a
venv with the real vLLM; `VLLM_TARGET_DEVICE=cpu` on a machine without a GPU).

Builds the `serve` subcommand's parser exactly as `vllm`'s CLI main does, parses, runs the
subcommand's own validation and turns the result into engine arguments (no model is loaded).
Prints one JSON object: {FILE: {"ok": bool, "error": str, "args": {...}}}.
"""

import contextlib
import io
import json
import sys

import vllm
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser

KEYS = (
    "model",
    "served_model_name",
    "host",
    "port",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "max_model_len",
    "gpu_memory_utilization",
    "nnodes",
    "node_rank",
    "master_addr",
    "master_port",
    "headless",
    "distributed_executor_backend",
    "revision",
    "max_num_seqs",
    "quantization",
    "kv_cache_dtype",
    "dtype",
)


def parse(path):
    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    command = ServeSubcommand()
    command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(["serve", "--config", path])
        command.validate(args)
        vllm.AsyncEngineArgs.from_cli_args(args)
    except SystemExit:
        return {"ok": False, "error": errors.getvalue().strip()[-2000:]}
    except Exception as error:  # vLLM's own validation
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    values = {key: getattr(args, key, None) for key in KEYS}
    return {"ok": True, "args": json.loads(json.dumps(values, default=str))}


print(json.dumps({path: parse(path) for path in sys.argv[1:]}))
