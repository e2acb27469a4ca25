"""The gateway for real: the rendered config run by Debian's `haproxy -db` (non-root, on loopback,
its files under tmp_path) in front of stand-in vLLM servers (tests/standins), reached like a client
would: keys, routing by `model`, OpenAI errors, limits, the engines' key, a replica that is down."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from standins import gateway as gateway_api
from standins import harness as h

from servekit.gateway import GatewayLayout, gateway_files, parse_keys
from servekit.hostplan import Route

pytestmark = pytest.mark.timeout(120)

ENGINE = "engine-key.0123456789"
KEYS = {
    "alice": "sk-alice-0123456789abcdef",
    "only-b": "sk-onlyb-0123456789abcdef",
    "limited": "sk-limited-0123456789abcdef",
    "single": "sk-single-0123456789abcdef",
}
KEY_LINES = [
    "# name key [models=a,b] [rpm=N] [concurrent=N]",
    f"alice {KEYS['alice']}",
    f"only-b {KEYS['only-b']} models=model-b",
    f"limited {KEYS['limited']} rpm=3",
    f"single {KEYS['single']} concurrent=1",
]
PROMPT = "the secret prompt words"


@dataclass
class Gw:
    port: int
    socket: Path
    haproxy: h.Proc
    upstreams: dict[str, h.Proc]

    def post(self, path: str, body: dict[str, Any], key: str | None = "alice") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {KEYS[key]}"} if key else {}
        status, _headers, data = h.request(self.port, "POST", path, body, headers, timeout=20)
        return status, json.loads(data)

    def runtime(self, command: str) -> str:
        """One command on HAProxy's runtime API socket."""
        return gateway_api.runtime(str(self.socket), command)

    def servers(self) -> dict[str, str]:
        """`backend/server` -> status, from HAProxy's runtime API."""
        return {name: row["status"] for name, row in gateway_api.servers(str(self.socket)).items()}


plan_with = gateway_api.loopback_plan


def vllm(served: str, port: int, log_dir: Path) -> h.Proc:
    env = h.vllm_env(VLLM_STANDIN_TOKENS_PER_S="40", VLLM_STANDIN_TTFT="0.01")
    argv = h.vllm_argv(
        "serve", "standin/tiny", "--served-model-name", served, "--api-key", ENGINE,
        "--host", "127.0.0.1", "--port", str(port),
    )  # fmt: skip
    proc = h.Proc(argv, env, log_dir, f"vllm-{served}-{port}")
    return proc


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    root = tmp_path_factory.mktemp("gateway")
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(haproxy).exists(), "install haproxy (apt-get install haproxy; .ci/run does)"
    a1, a2, b1, dead, port = (h.free_port() for _ in range(5))
    upstreams = {
        "a1": vllm("model-a", a1, root),
        "a2": vllm("model-a", a2, root),
        "b1": vllm("model-b", b1, root),
    }
    routes = [
        Route(model="model-a", upstreams=[f"127.0.0.1:{a1}", f"127.0.0.1:{a2}"], engine="vllm"),
        Route(model="model-b", upstreams=[f"127.0.0.1:{b1}", f"127.0.0.1:{dead}"], engine="vllm"),
    ]
    layout = GatewayLayout.under(str(root))
    keys = parse_keys(KEY_LINES, ["model-a", "model-b"])
    for file in gateway_files(plan_with(routes, port), keys, ENGINE, layout):
        Path(file.path).parent.mkdir(parents=True, exist_ok=True)
        Path(file.path).write_text(file.content)
    proxy: h.Proc | None = None
    try:
        for p in (a1, a2, b1):
            h.wait_http(p, "/health", timeout=20)
        proxy = h.Proc([haproxy, "-f", layout.config, "-db"], h.vllm_env(), root, "haproxy")
        gateway = Gw(port, Path(layout.runtime_socket), proxy, upstreams)
        wait_up(gateway, {"pool1/replica1", "pool1/replica2", "pool2/replica1"})
        yield gateway
    finally:
        if proxy is not None:
            proxy.stop()
        for upstream in upstreams.values():
            upstream.stop()


def wait_up(gateway: Gw, live: set[str]) -> None:
    """Until HAProxy listens and its first health checks found these replicas UP."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert gateway.haproxy.popen.poll() is None, gateway.haproxy.stderr
        if h.port_open(gateway.port) and gateway.socket.exists():
            up = {name for name, status in gateway.servers().items() if status == "UP"}
            if live <= up:
                return
        time.sleep(0.1)
    raise AssertionError(f"replicas not UP: {gateway.servers()}\n{gateway.haproxy.stderr}")


def chat(model: str, max_tokens: int = 4, **extra: object) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, **extra}


def test_a_valid_key_gets_chat_and_completions_routed_by_model(gw: Gw) -> None:
    for model in ("model-a", "model-b"):
        status, body = gw.post("/v1/chat/completions", chat(model))
        assert status == 200, body
        assert body["model"] == model and body["object"] == "chat.completion"
        status, body = gw.post(
            "/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": 3}
        )
        assert status == 200, body
        assert body["model"] == model and body["object"] == "text_completion"


def test_streaming_passes_through(gw: Gw) -> None:
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    events = h.sse_events(gw.port, "/v1/chat/completions", chat("model-b", stream=True), headers)
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _t, data in events[:-1]]
    assert {c["model"] for c in chunks} == {"model-b"}
    assert len(chunks) >= 4
    events = h.sse_events(
        gw.port,
        "/v1/completions",
        {"model": "model-a", "prompt": PROMPT, "stream": True, "max_tokens": 4},
        headers,
    )
    assert events[-1][1] == "[DONE]" and json.loads(events[0][1])["model"] == "model-a"


def test_models_lists_the_union_of_served_names(gw: Gw) -> None:
    headers = {"Authorization": f"Bearer {KEYS['only-b']}"}
    status, _headers, data = h.request(gw.port, "GET", "/v1/models", headers=headers)
    assert status == 200
    body = json.loads(data)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["model-a", "model-b"]


def test_the_bearer_scheme_is_case_insensitive(gw: Gw) -> None:
    headers = {"Authorization": f"bearer {KEYS['alice']}"}
    assert h.request(gw.port, "GET", "/v1/models", headers=headers)[0] == 200


@pytest.mark.parametrize(
    "authorization", [None, "Bearer sk-wrong-0123456789abcdef", "sk-x", f"Basic {KEYS['alice']}"]
)
def test_no_key_or_a_wrong_key_gets_401_json(gw: Gw, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path, body in [("POST", "/v1/chat/completions", chat("model-a")),
                               ("GET", "/v1/models", None)]:  # fmt: skip
        status, got_headers, data = h.request(gw.port, method, path, body, headers)
        assert status == 401
        assert got_headers["content-type"] == "application/json"
        assert json.loads(data)["error"]["code"] == "invalid_api_key"


def test_a_model_outside_the_keys_allowlist_gets_403(gw: Gw) -> None:
    status, body = gw.post("/v1/chat/completions", chat("model-a"), key="only-b")
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    status, body = gw.post("/v1/chat/completions", chat("model-b"), key="only-b")
    assert status == 200, body


def test_an_unknown_model_or_route_gets_404_json(gw: Gw) -> None:
    status, body = gw.post("/v1/chat/completions", chat("gpt-4"))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = gw.post("/v1/chat/completions", {"messages": []})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = gw.post("/v1/fine_tuning/jobs", chat("model-a"))
    assert status == 404 and body["error"]["code"] == "unknown_url"


def test_a_large_body_routes_when_model_is_within_the_buffer_413_else(gw: Gw) -> None:
    words = "w " * 150_000  # 300 KB: beyond HAProxy's buffer
    status, body = gw.post("/v1/completions", {"model": "model-a", "prompt": words})
    assert status == 400 and "maximum context length" in body["error"]["message"]  # upstream's
    status, body = gw.post("/v1/completions", {"prompt": words, "model": "model-a"})
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = gw.post("/v1/completions", {"prompt": "w " * 100_000, "model": "model-a"})
    assert status == 400 and "maximum context length" in body["error"]["message"]


def test_metrics_are_served_to_loopback_without_a_key(gw: Gw) -> None:
    status, _headers, data = h.request(gw.port, "GET", "/metrics")
    assert status == 200
    assert b"haproxy_backend_active_servers" in data and b'proxy="pool1"' in data


def test_over_the_keys_rpm_gets_429(gw: Gw) -> None:
    statuses = [gw.post("/v1/completions", {"model": "model-a", "prompt": "x", "max_tokens": 1},
                        key="limited")[0] for _ in range(4)]  # fmt: skip
    assert statuses == [200, 200, 200, 429]
    status, body = gw.post(
        "/v1/completions", {"model": "model-a", "prompt": "x", "max_tokens": 1}, key="limited"
    )
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert gw.post("/v1/chat/completions", chat("model-a"))[0] == 200  # other keys unaffected


def test_over_the_keys_concurrency_gets_429_and_frees_when_done(gw: Gw) -> None:
    results: list[int] = []

    def slow_request() -> None:
        results.append(gw.post("/v1/chat/completions", chat("model-a", 60), key="single")[0])

    slow = threading.Thread(target=slow_request)
    slow.start()
    deadline = time.monotonic() + 10
    while "key=single" not in (table := gw.runtime("show table key_limits")) or (
        "conn_cur=1" not in table
    ):
        assert time.monotonic() < deadline, table
        time.sleep(0.05)
    status, body = gw.post("/v1/chat/completions", chat("model-a"), key="single")
    slow.join(20)
    assert results == [200]
    assert status == 429 and "in flight" in body["error"]["message"]
    assert gw.post("/v1/chat/completions", chat("model-a"), key="single")[0] == 200


def test_the_engine_key_replaces_the_clients(gw: Gw) -> None:
    """The stand-ins accept only the engines' key: a 200 through the gateway means HAProxy sent
    it, and a client's key sent straight to a replica is refused."""
    a1 = gw.upstreams["a1"].popen.args[-1]
    status, _h, _d = h.request(int(a1), "POST", "/v1/chat/completions", chat("model-a"),
                               {"Authorization": f"Bearer {KEYS['alice']}"})  # fmt: skip
    assert status == 401
    status, _h, _d = h.request(int(a1), "POST", "/v1/chat/completions", chat("model-a"),
                               {"Authorization": f"Bearer {ENGINE}"})  # fmt: skip
    assert status == 200
    assert gw.post("/v1/chat/completions", chat("model-a"))[0] == 200


def test_a_replica_that_is_down_is_skipped(gw: Gw) -> None:
    deadline = time.monotonic() + 15
    while gw.servers().get("pool2/replica2") != "DOWN" and time.monotonic() < deadline:
        time.sleep(0.2)
    servers = gw.servers()
    assert servers["pool2/replica2"] == "DOWN" and servers["pool2/replica1"] == "UP", servers
    assert [gw.post("/v1/chat/completions", chat("model-b"))[0] for _ in range(6)] == [200] * 6
    gw.upstreams["a2"].stop()  # a replica lost between health checks: requests are redispatched
    assert [gw.post("/v1/chat/completions", chat("model-a"))[0] for _ in range(6)] == [200] * 6


def test_the_log_shows_no_keys_and_no_prompts(gw: Gw) -> None:
    assert gw.post("/v1/chat/completions", chat("model-a"))[0] == 200
    time.sleep(0.2)
    log = gw.haproxy.stderr
    assert "key=alice" in log and "/v1/chat/completions" in log
    assert not any(key in log for key in KEYS.values())
    assert ENGINE not in log and "secret prompt" not in log
