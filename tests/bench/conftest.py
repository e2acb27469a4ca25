"""Fixtures: the stand-in engines (tests/standins) as subprocesses, a word-level tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from bench_helpers import MODEL, STANDINS, Server, free_port, wait_ready
from standin_tokenizer import write_tokenizer

from servekit.bench.prompts import HfTokenizer


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
        wait_ready(server.url + "/health", process, stderr)
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
        wait_ready(server.url + "/api/version", process, stderr)
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
