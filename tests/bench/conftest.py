"""Stand-in engines (tests/standins) started as subprocesses, and helpers to benchmark them."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from servekit.bench.prompts import HfTokenizer
from servekit.bench.runner import Options, run_benchmark
from servekit.bench.schema import BenchResult
from servekit.bench.target import Resolved, inspect_server, with_engine

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tests" / "standins"
sys.path.insert(0, str(REPO / "benchmarks"))

from standin_tokenizer import write_tokenizer  # noqa: E402

MODEL = "Qwen/Qwen3-0.6B"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    chunk_log: Path | None = None


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
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


@pytest.fixture
def start_vllm(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start the stand-in `vllm serve` with VLLM_STANDIN_* knobs; stopped after the test."""
    started: list[Server] = []

    def start(*args: str, chunk_log: bool = False, port: int = 0, **knobs: str) -> Server:
        port = port or free_port()
        env = {**os.environ, "PYTHONPATH": str(STANDINS), "VLLM_STANDIN_STARTUP_DELAY": "0"}
        env.pop("VLLM_API_KEY", None)
        log_path = tmp_path / f"chunks-{port}.log" if chunk_log else None
        if log_path is not None:
            env["VLLM_STANDIN_CHUNK_LOG"] = str(log_path)
        env.update({f"VLLM_STANDIN_{k.upper()}": v for k, v in knobs.items()})
        stderr = tmp_path / f"vllm-{port}.err"
        process = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", MODEL,
             "--host", "127.0.0.1", "--port", str(port), *args],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr.open("wb"),
        )  # fmt: skip
        server = Server(f"http://127.0.0.1:{port}", process, log_path)
        started.append(server)
        _wait_ready(server.url + "/health", process, stderr)
        return server

    yield start
    for server in started:
        server.process.terminate()
    for server in started:
        server.process.wait(10)


@pytest.fixture
def start_ollama(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start the stand-in `ollama serve` and pull the given models into its store."""
    started: list[Server] = []

    def start(*models: str, parallel: int = 1, **knobs: str) -> Server:
        port = free_port()
        env = {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(tmp_path / f"models-{port}"),
            "HOME": str(tmp_path),
            "OLLAMA_NUM_PARALLEL": str(parallel),
        }
        env.update({f"OLLAMA_STANDIN_{k.upper()}": v for k, v in knobs.items()})
        stderr = tmp_path / f"ollama-{port}.err"
        process = subprocess.Popen(
            [sys.executable, str(STANDINS / "ollama" / "bin" / "ollama"), "serve"],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr.open("wb"),
        )  # fmt: skip
        server = Server(f"http://127.0.0.1:{port}", process)
        started.append(server)
        _wait_ready(server.url + "/api/version", process, stderr)
        for model in models:
            reply = httpx.post(
                server.url + "/api/pull", json={"model": model, "stream": False}, timeout=30
            )
            assert reply.status_code == 200, reply.text
        return server

    yield start
    for server in started:
        server.process.terminate()
    for server in started:
        server.process.wait(10)


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> HfTokenizer:
    folder = write_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return HfTokenizer(folder / "tokenizer.json")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the prompts-seen history of each test to itself."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


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
