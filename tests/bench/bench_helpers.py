"""Helpers for the bench tests: free ports, stand-in processes, one benchmark run in-process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from servekit.bench.options import Options
from servekit.bench.prompts import HfTokenizer
from servekit.bench.runner import run_benchmark
from servekit.bench.schema import BenchResult
from servekit.bench.target import Resolved, inspect_server, with_engine

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tests" / "standins"
MODEL = "Qwen/Qwen3-0.6B"
sys.path.insert(0, str(REPO / "benchmarks"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    chunk_log: Path | None = None


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"stand-in exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"stand-in at {url} not ready: {log.read_text()[-2000:]}")


def bench(
    url: str,
    tokenizer: HfTokenizer | None = None,
    model: str | None = MODEL,
    api_key: str | None = None,
    **options: object,
) -> BenchResult:
    """Run one benchmark against `url` in-process, as `servekit bench` does."""
    resolved = Resolved(base_url=url, model=model, api_key=api_key)
    info = inspect_server(resolved)
    return asyncio.run(
        run_benchmark(with_engine(resolved, info), info, Options(**options), tokenizer)  # type: ignore[arg-type]
    )
