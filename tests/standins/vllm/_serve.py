"""`vllm serve`: validate like vLLM, check the weights, rendezvous the nodes, then open the port.

Readiness follows real vLLM: the HTTP socket is bound at once (a port clash fails fast) but
`listen()` is called only when the engine is "ready" (after VLLM_STANDIN_STARTUP_DELAY and, on a
multi-node head, after every worker joined), so until then even a TCP connect is refused. Then
`Application startup complete.` goes to stderr. SIGTERM or SIGINT shut down cleanly with exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ._api import VERSION, Api
from ._engine import Engine, Knobs
from ._flags import non_default
from ._http import HttpServer
from ._log import WAIT_TIMEOUT, log, uvicorn
from ._multinode import Head, run_worker
from ._prefix import PrefixCache

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
DEFAULT_MAX_MODEL_LEN = 8192
DEFAULT_MAX_NUM_SEQS = 1024
_TRUE = {"1", "true", "yes", "on"}


class StartupError(Exception):
    """vLLM would stop here with an exception (exit code 1)."""


def _int_or(value: object, default: int) -> int:
    """A flag vLLM types loosely (e.g. `--block-size None`): its int value, else the default."""
    try:
        return int(str(value))
    except ValueError:
        return default


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _hub_dir(download_dir: str | None) -> Path:
    if download_dir:
        return Path(download_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def find_weights(model: str, revision: str | None, download_dir: str | None) -> Path | None:
    """The directory holding the model's config.json, None for a hub id we may download.

    A local directory must hold config.json (or Mistral's params.json). With HF_HUB_OFFLINE=1 a hub
    id must be in the cache: `$HF_HOME/hub/models--ORG--NAME/snapshots/<revision or refs/main>`.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file() or (local / "params.json").is_file():
            return local
        raise StartupError(
            f"Invalid repository ID or local directory specified: '{model}'.\nPlease verify the "
            "following requirements:\n1. Provide a valid Hugging Face repository ID.\n2. Specify a"
            " local directory that contains a recognized configuration file.\n   - For Hugging "
            "Face models: ensure the presence of a 'config.json'.\n   - For Mistral models: "
            "ensure the presence of a 'params.json'."
        )
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise StartupError(
            f"Invalid repository ID or local directory specified: '{model}'. The "
            "directory does not exist."
        )
    if not _truthy("HF_HUB_OFFLINE"):
        return None
    repo = _hub_dir(download_dir) / ("models--" + model.replace("/", "--"))
    rev = revision or "main"
    snapshot = repo / "snapshots" / rev
    ref = repo / "refs" / rev
    if not snapshot.is_dir() and ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
    if (snapshot / "config.json").is_file():
        return snapshot
    raise StartupError(
        f"HF_HUB_OFFLINE=1 and '{model}' (revision {rev}) is not in the local cache: expected "
        f"{snapshot / 'config.json'}. We couldn't connect to 'https://huggingface.co' to load "
        "the files, and couldn't find them in the cached files."
    )


def _derived_max_len(weights: Path | None) -> int | None:
    if weights is None or not (weights / "config.json").is_file():
        return None
    try:
        config = json.loads((weights / "config.json").read_text())
    except ValueError as exc:
        raise StartupError(f"Invalid config.json in {weights}: {exc}") from exc
    for key in ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    text = config.get("text_config")
    if isinstance(text, dict) and isinstance(text.get("max_position_embeddings"), int):
        return int(text["max_position_embeddings"])
    return None


def resolve_max_model_len(requested: int | None, weights: Path | None) -> int:
    derived = _derived_max_len(weights)
    if requested is None or requested == -1:
        return derived or DEFAULT_MAX_MODEL_LEN
    if requested < 1:
        raise StartupError(f"max_model_len must be positive, got {requested}")
    if derived is not None and requested > derived and not _truthy("VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        raise StartupError(
            f"User-specified max_model_len ({requested}) is greater than the derived "
            f"max_model_len (max_position_embeddings={derived} in model's config.json). To allow "
            "overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."
        )
    return requested


def validate_parallel(ns: argparse.Namespace) -> None:
    """vLLM's checks on the native multi-node flags."""
    nnodes = ns.nnodes if ns.nnodes is not None else 1
    rank = ns.node_rank if ns.node_rank is not None else 0
    tp = ns.tensor_parallel_size or 1
    pp = ns.pipeline_parallel_size or 1
    if nnodes < 1:
        raise StartupError(f"nnodes must be at least 1, got {nnodes}")
    if not 0 <= rank < nnodes:
        raise StartupError(f"node_rank ({rank}) must be in [0, nnodes) with nnodes={nnodes}")
    if ns.headless and nnodes == 1 and ns.data_parallel_start_rank is not None:
        raise StartupError(
            "the stand-in does not implement data-parallel headless nodes "
            "(--headless --data-parallel-start-rank); use --nnodes/--node-rank"
        )
    if ns.headless and rank == 0:
        raise StartupError(
            "--headless is for worker nodes: it needs --node-rank >= 1 (rank 0 is "
            "the head node that runs the API server)"
        )
    if nnodes > 1 and rank > 0 and not ns.headless:
        raise StartupError(f"node_rank {rank} > 0 runs no API server: start it with --headless")
    if (tp * pp) % nnodes:
        raise StartupError(
            f"world_size (tensor_parallel_size {tp} x pipeline_parallel_size {pp} = {tp * pp}) "
            f"must be divisible by nnodes ({nnodes})"
        )
    if nnodes > 1 and ns.distributed_executor_backend not in (None, "mp"):
        raise StartupError(
            "--nnodes > 1 is vLLM's multiprocessing multi-node mode: it needs "
            f"distributed_executor_backend 'mp', not "
            f"{ns.distributed_executor_backend!r}"
        )


def _raise_nofile() -> None:
    """Like vLLM's set_ulimit: thousands of streaming clients need file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65535
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, 65535), hard))


def _bind(ns: argparse.Namespace) -> tuple[socket.socket, str]:
    """Bind the API socket now; listen() comes later, when the engine is ready."""
    if ns.uds:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ns.uds)
        sock.bind(ns.uds)
        return sock, f"unix:{ns.uds}"
    host = ns.host or ""
    port = ns.port if ns.port is not None else 8000
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"[Errno {exc.errno}] error while attempting to bind on address "
            f"({host!r}, {port}): {exc.strerror}"
        ) from exc
    shown = f"[{host}]" if family == socket.AF_INET6 else (host or "0.0.0.0")
    return sock, f"http://{shown}:{port}"


def _effective(
    ns: argparse.Namespace,
    model: str,
    served: list[str],
    max_len: int,
    keys: list[str],
    knobs: Knobs,
) -> dict[str, Any]:
    return {
        "model": model,
        "served_model_name": served,
        "host": ns.host,
        "port": ns.port or 8000,
        "uds": ns.uds,
        "max_model_len": max_len,
        "max_num_seqs": ns.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
        "tensor_parallel_size": ns.tensor_parallel_size or 1,
        "pipeline_parallel_size": ns.pipeline_parallel_size or 1,
        "nnodes": ns.nnodes or 1,
        "node_rank": ns.node_rank or 0,
        "master_addr": ns.master_addr or "127.0.0.1",
        "master_port": ns.master_port or 29501,
        "headless": bool(ns.headless),
        "api_key": f"<{len(keys)} key(s), redacted>" if keys else None,
        "standin": {
            "startup_delay": knobs.startup_delay,
            "ttft": knobs.ttft,
            "tokens_per_s": knobs.tokens_per_s,
            "eos_after": knobs.eos_after,
            "fail_after_tokens": knobs.fail_after_tokens,
        },
    }


def run_serve(ns: argparse.Namespace) -> int:
    """Run `vllm serve` with parsed args; returns the process exit code."""
    model = ns.model_tag or ns.model or DEFAULT_MODEL
    served = list(ns.served_model_name or [model])
    env_key = os.environ.get("VLLM_API_KEY")
    keys = list(ns.api_key or ([env_key] if env_key else []))
    knobs = Knobs.from_env()
    log("INFO", "api_server.py", f"vLLM API server version {VERSION}")
    log("INFO", "utils.py", f"non-default args: {non_default(ns)}")
    for var in ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        if os.environ.get(var):
            log("INFO", "envs.py", f"{var}={os.environ[var]}")
    try:
        validate_parallel(ns)
        weights = find_weights(model, ns.revision, ns.download_dir)
        max_len = resolve_max_model_len(ns.max_model_len, weights)
    except StartupError as exc:
        log("ERROR", "api_server.py", str(exc).splitlines()[0])
        print(f"ValueError: {exc}", file=sys.stderr)
        return 1
    if weights is not None:
        log("INFO", "model.py", f"Loading weights from {weights}")
    _raise_nofile()
    nnodes = ns.nnodes or 1
    master_addr = ns.master_addr or "127.0.0.1"
    master_port = ns.master_port if ns.master_port is not None else 29501
    if ns.headless:
        return _run(_worker(master_addr, master_port, ns.node_rank, nnodes))
    effective = _effective(ns, model, served, max_len, keys, knobs)
    block_size = _int_or(ns.block_size, 16)
    num_blocks = _int_or(ns.num_gpu_blocks_override, knobs.kv_blocks)
    _log_profile(weights, block_size * num_blocks, max_len)
    cache_info = {
        "block_size": str(block_size),
        "cache_dtype": ns.kv_cache_dtype or "auto",
        "enable_prefix_caching": str(ns.enable_prefix_caching is not False),
        "gpu_memory_utilization": str(ns.gpu_memory_utilization or 0.92),
        "num_gpu_blocks": str(num_blocks),
        "num_cpu_blocks": "None",
        "kv_cache_memory_bytes": str(ns.kv_cache_memory_bytes),
        "prefix_caching_hash_algo": ns.prefix_caching_hash_algo or "sha256",
    }
    engine = Engine(
        model_name=served[0],
        max_model_len=max_len,
        max_num_seqs=ns.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
        cache_info=cache_info,
        knobs=knobs,
        block_size=block_size,
        num_gpu_blocks=num_blocks,
        prefix_cache=PrefixCache(block_size, num_blocks, ns.enable_prefix_caching is not False),
    )
    api = Api(engine, served, model, keys)
    head = Head(master_addr, master_port, nnodes) if nnodes > 1 else None
    return _run(_head(ns, api, head, knobs, effective))


def _log_profile(weights: Path | None, kv_tokens: int, max_len: int) -> None:
    """The startup numbers vLLM 0.33 logs (gpu_model_runner.py, kv_cache_utils.py), from the
    stand-in's own state: the bytes of the weights folder it "loaded" and the KV blocks it has."""
    size = sum(f.stat().st_size for f in weights.rglob("*") if f.is_file()) if weights else 0
    log("INFO", "gpu_model_runner.py", f"Model loading took {size / 2**30:.4f} GiB and 0.5 seconds")
    log("INFO", "kv_cache_utils.py", f"GPU KV cache size: {kv_tokens:,} tokens")
    log(
        "INFO",
        "kv_cache_utils.py",
        f"Maximum concurrency for {max_len:,} tokens per request: {kv_tokens / max_len:.2f}x",
    )


def _run(coro: Any) -> int:
    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            code: int = await coro
            return code
        except asyncio.CancelledError:
            uvicorn("Shutting down")
            uvicorn(f"Finished server process [{os.getpid()}]")
            return 0

    return asyncio.run(main())


async def _worker(addr: str, port: int, rank: int, nnodes: int) -> int:
    log(
        "INFO",
        "api_server.py",
        f"Running headless worker node rank {rank} of {nnodes}; it "
        f"serves no API and joins the head at {addr}:{port}",
    )
    return await run_worker(addr, port, rank, nnodes)


async def _head(
    ns: argparse.Namespace, api: Api, head: Head | None, knobs: Knobs, effective: dict[str, Any]
) -> int:
    try:
        sock, url = _bind(ns)
    except StartupError as exc:
        log("ERROR", "api_server.py", str(exc))
        return 1
    http = HttpServer(api.handle, lambda exc: log("ERROR", "api_server.py", repr(exc)))
    try:
        if head is not None:
            await head.start()
            try:
                await head.wait_workers()
            except WAIT_TIMEOUT:
                log(
                    "ERROR",
                    "multinode.py",
                    "Timed out waiting for the worker nodes (VLLM_ENGINE_READY_TIMEOUT_S)",
                )
                return 1
        if knobs.startup_delay > 0:
            await asyncio.sleep(knobs.startup_delay)
        log("INFO", "api_server.py", f"Starting vLLM API server 0 on {url}")
        log("INFO", "api_server.py", f"Effective args: {effective}")
        await http.start(sock)
        uvicorn(f"Started server process [{os.getpid()}]")
        uvicorn("Waiting for application startup.")
        uvicorn("Application startup complete.")
        if head is None:
            await asyncio.Event().wait()
            return 0
        await head.lost.wait()
        api.healthy = False
        log(
            "ERROR",
            "core.py",
            f"Worker node rank {head.lost_rank} died: EngineDeadError; "
            "shutting down the API server",
        )
        return 1
    finally:
        await http.close()
        if head is not None:
            await head.close()
        sock.close()
