"""Helpers for tests that run the stand-ins as local processes on free loopback ports.

Every wait here is bounded in time, and every process started is stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP connect succeeds (the server has called listen())."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


class Proc:
    """A stand-in process whose stdout and stderr go to files we can read while it runs."""

    def __init__(self, argv: list[str], env: dict[str, str], log_dir: Path, name: str) -> None:
        self.out_path = log_dir / f"{name}.out"
        self.err_path = log_dir / f"{name}.err"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL
        )

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until `text` appears on stderr (or fail, showing the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr:
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not logged (rc={self.popen.poll()}):\n{self.stderr}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout=timeout)

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 5 s; returns the exit code."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=5)
        self._out.close()
        self._err.close()
        return self.popen.returncode


@contextlib.contextmanager
def running(
    argv: list[str],
    env: dict[str, str],
    log_dir: Path,
    name: str,
    ready_log: str | None = None,
    timeout: float = 15.0,
) -> Iterator[Proc]:
    """Run a process for the duration of a `with` block; optionally wait for a ready log line."""
    proc = Proc(argv, env, log_dir, name)
    try:
        if ready_log:
            proc.wait_log(ready_log, timeout)
        yield proc
    finally:
        proc.stop()


def vllm_env(**extra: str) -> dict[str, str]:
    """Environment to run the stand-in vllm from the source tree, with quick start-up."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "HF_", "NCCL_", "GLOO_"))
    }
    env["PYTHONPATH"] = str(HERE)
    env["VLLM_STANDIN_STARTUP_DELAY"] = "0.05"
    env.update(extra)
    return env


def vllm_argv(*args: str) -> list[str]:
    """`vllm ...` run from the source tree with this interpreter."""
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", *args]


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def sse_events(
    port: int, path: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> list[tuple[float, str]]:
    """POST and read a server-sent-event stream: [(monotonic arrival, data payload)]."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        assert resp.status == 200, (resp.status, resp.read())
        assert resp.getheader("content-type", "").startswith("text/event-stream")
        events: list[tuple[float, str]] = []
        pending = b""
        while True:
            line = resp.readline()
            if not line:
                break
            pending += line
            if pending.endswith(b"\n\n"):
                text = pending.decode()
                assert text.startswith("data: "), text
                events.append((time.monotonic(), text[len("data: ") : -2]))
                pending = b""
        assert pending == b"", pending
        return events
    finally:
        conn.close()


def wait_http(port: int, path: str = "/health", timeout: float = 10.0, status: int = 200) -> None:
    """Poll until GET path answers `status`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = request(port, "GET", path, timeout=1)[0]
            if got == status:
                return
            last = got
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"GET {path} on :{port} never answered {status} (last: {last})")


def load_script(name: str, path: Path) -> ModuleType:
    """Import a Python script that has no .py suffix (the stand-in `bin/ollama`) as a module."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
