"""The gateway's check before it routes to new replicas, run by bash as on the gateway host:
a pool the running configuration does not know needs a replica answering its health check; a
known pool never blocks a change (a replica down for a while must not block a key change)."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins import harness as h

from servekit.gateway.checks import new_pools_answer_script
from servekit.gateway.haproxy import Pool, Server


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/health", "/") else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def pool(name: str, models: tuple[str, ...], *addresses: str, engine: str = "vllm") -> Pool:
    health = "/health" if engine == "vllm" else "/"
    servers = tuple(Server(f"replica{i}", a) for i, a in enumerate(addresses, 1))
    return Pool(name, engine, health, models, servers)


def check(pools: list[Pool], config: Path) -> subprocess.CompletedProcess[str]:
    script = new_pools_answer_script(pools, str(config))
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def test_a_new_pool_with_a_replica_answering_passes(live: str, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{h.free_port()}"
    result = check([pool("pool1", ("chat",), dead, live)], tmp_path / "absent.cfg")
    assert result.returncode == 0, result.stderr


def test_a_new_pool_without_one_stops_naming_its_models(live: str, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{h.free_port()}"
    pools = [pool("pool1", ("chat", "assistant"), dead), pool("pool2", ("embed",), live)]
    result = check(pools, tmp_path / "absent.cfg")
    assert result.returncode != 0
    assert f"no replica of chat, assistant (vllm: {dead}) answers /health" in result.stderr
    assert "embed" not in result.stderr
    assert "deploy the engines first" in result.stderr


def test_a_pool_the_running_configuration_routes_to_is_not_checked(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{h.free_port()}"
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"backend pool1\n    server replica1 {dead}\n")
    assert check([pool("pool1", ("chat",), dead)], config).returncode == 0
    other = f"127.0.0.1:{h.free_port()}"
    assert check([pool("pool1", ("chat",), other)], config).returncode != 0


def test_ollama_pools_are_probed_on_their_root(live: str, tmp_path: Path) -> None:
    result = check([pool("pool1", ("llama3.1:8b",), live, engine="ollama")], tmp_path / "x")
    assert result.returncode == 0, result.stderr
