"""Draining a replica at the gateway for real: the rendered config run by Debian's `haproxy -db`
on loopback in front of two stand-in vLLM replicas, and servekit's drain/enable scripts run by
`sh` speaking to HAProxy's admin socket with Debian's `socat`, as the vLLM rollout runs them on
the gateway host."""

from __future__ import annotations

import json
import shutil
import subprocess
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
from servekit.gateway.drain import Target, drain_script, enable_script, targets
from servekit.hostplan import GatewayHost, GatewayMember, Route, SecretSource

pytestmark = pytest.mark.timeout(120)

KEY = "sk-drain-0123456789abcdef"


def gateway_plan(routes: list[Route], members: list[GatewayMember], port: int) -> GatewayHost:
    return GatewayHost(
        port=port,
        routes=routes,
        api_keys=SecretSource(env="KEYS"),
        engine_api_key=None,
        members=members,
    )


def test_targets_name_the_servers_of_the_replicas_asked_for() -> None:
    routes = [
        Route(model="chat", upstreams=["10.0.0.1:8000", "10.0.0.2:8000"], engine="vllm"),
        Route(model="assistant", upstreams=["10.0.0.1:8000", "10.0.0.2:8000"], engine="vllm"),
        Route(model="embed", upstreams=["10.0.0.1:8001"], engine="vllm"),
    ]
    members = [
        GatewayMember(serve="chat", replica=0, host="a", upstream="10.0.0.1:8000"),
        GatewayMember(serve="chat", replica=1, host="b", upstream="10.0.0.2:8000"),
        GatewayMember(serve="embed", replica=0, host="a", upstream="10.0.0.1:8001"),
    ]
    gateway = gateway_plan(routes, members, 8080)
    assert gateway.waves == 3
    assert targets(gateway, [("chat", 1)]) == [Target("pool1", "replica2", "10.0.0.2:8000")]
    assert [t.name for t in targets(gateway, [("chat", 0), ("embed", 0)])] == [
        "pool1/replica1",
        "pool2/replica1",
    ]
    assert targets(gateway, [("chat", 7)]) == []


@dataclass
class Gw:
    port: int
    socket: Path
    upstreams: dict[str, int]

    def stat(self, server: str, column: str) -> str:
        rows = gateway_api.servers(str(self.socket))
        assert server in rows, f"no {server} in show stat"
        return rows[server][column]

    def chat(self, max_tokens: int = 2) -> tuple[int, Any]:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {KEY}"}
        status, _h, data = h.request(
            self.port, "POST", "/v1/chat/completions", {**body, "max_tokens": max_tokens}, headers,
            timeout=30,
        )  # fmt: skip
        return status, json.loads(data)

    def script(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    assert shutil.which("socat"), "install socat (apt-get install socat; .ci/run does)"
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    root = tmp_path_factory.mktemp("drain")
    r1, r2, port = h.free_port(), h.free_port(), h.free_port()
    upstreams = [f"127.0.0.1:{r1}", f"127.0.0.1:{r2}"]
    members = [
        GatewayMember(serve="chat", replica=i, host=f"h{i}", upstream=u)
        for i, u in enumerate(upstreams)
    ]
    plan = gateway_api.loopback_plan(
        [Route(model="chat", upstreams=upstreams, engine="vllm")], port, members
    )
    layout = GatewayLayout.under(str(root))
    keys = parse_keys([f"ci {KEY}"], ["chat"])
    for file in gateway_files(plan, keys, None, layout):
        Path(file.path).parent.mkdir(parents=True, exist_ok=True)
        Path(file.path).write_text(file.content)
    env = h.vllm_env(VLLM_STANDIN_TOKENS_PER_S="20", VLLM_STANDIN_TTFT="0.01")
    procs = [
        h.Proc(h.vllm_argv("serve", "standin/tiny", "--served-model-name", "chat",
                           "--host", "127.0.0.1", "--port", str(p)), env, root, f"vllm-{p}")
        for p in (r1, r2)
    ]  # fmt: skip
    proxy = None
    try:
        for p in (r1, r2):
            h.wait_http(p, "/health", timeout=20)
        proxy = h.Proc([haproxy, "-f", layout.config, "-db"], h.vllm_env(), root, "haproxy")
        found = Gw(port, Path(layout.runtime_socket), {"replica1": r1, "replica2": r2})
        wait_status(found, ["pool1/replica1", "pool1/replica2"], "UP")
        yield found
    finally:
        if proxy is not None:
            proxy.stop()
        for proc in procs:
            proc.stop()


def wait_status(gw: Gw, servers: list[str], status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(gw.stat(s, "status").startswith(status) for s in servers):
                return
        except (OSError, AssertionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{servers} not {status}")


def busy_server(gw: Gw) -> str:
    """The server holding the one request in flight."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for name in ("pool1/replica1", "pool1/replica2"):
            if gw.stat(name, "scur") == "1":
                return name
        time.sleep(0.05)
    raise AssertionError("no request in flight")


def test_drain_waits_for_requests_in_flight_and_sends_new_ones_elsewhere(gw: Gw) -> None:
    finished: list[float] = []

    def long_request() -> None:
        status, _body = gw.chat(max_tokens=60)  # 3 s at 20 tokens/s
        assert status == 200
        finished.append(time.monotonic())

    thread = threading.Thread(target=long_request)
    thread.start()
    busy = busy_server(gw)
    other = ({"pool1/replica1", "pool1/replica2"} - {busy}).pop()
    target = Target(*busy.split("/"), upstream="")
    result: list[subprocess.CompletedProcess[str]] = []
    drained_at: list[float] = []

    def drain_it() -> None:
        result.append(gw.script(drain_script([target], str(gw.socket), 30)))
        drained_at.append(time.monotonic())

    drain = threading.Thread(target=drain_it)
    drain.start()
    wait_status(gw, [busy], "DRAIN", timeout=5)
    before = int(gw.stat(other, "stot")), int(gw.stat(busy, "stot"))
    assert [gw.chat()[0] for _ in range(6)] == [200] * 6
    after = int(gw.stat(other, "stot")), int(gw.stat(busy, "stot"))
    assert (after[0] - before[0], after[1] - before[1]) == (6, 0)
    drain.join(timeout=30)
    thread.join(timeout=30)
    # the script returned only once the request in flight had ended (answered in full; it
    # streams for ~3 s, the script polls every second, the client may read its end a bit later)
    assert finished and drained_at and drained_at[0] > finished[0] - 0.5
    assert result[0].returncode == 0, result[0].stderr
    assert "drained" in result[0].stdout and "restarting anyway" not in result[0].stdout
    assert gw.stat(busy, "scur") == "0"

    enabled = gw.script(enable_script([target], str(gw.socket), timeout=20))
    assert enabled.returncode == 0, enabled.stderr
    assert "back in rotation" in enabled.stdout and "not up" not in enabled.stdout
    assert gw.stat(busy, "status") == "UP"


def test_drain_gives_up_waiting_after_its_timeout(gw: Gw) -> None:
    thread = threading.Thread(target=lambda: gw.chat(max_tokens=80))
    thread.start()
    busy = busy_server(gw)
    target = Target(*busy.split("/"), upstream="")
    started = time.monotonic()
    result = gw.script(drain_script([target], str(gw.socket), 1))
    assert time.monotonic() - started < 3.5
    assert result.returncode == 0, result.stderr
    assert "1 requests still in flight after 1 s" in result.stdout
    assert gw.script(enable_script([target], str(gw.socket), timeout=20)).returncode == 0
    thread.join(timeout=30)
    wait_status(gw, [busy], "UP")


def test_no_gateway_running_skips_with_a_message(tmp_path: Path) -> None:
    target = Target("pool1", "replica1", "")
    for script in (drain_script, enable_script):
        result = subprocess.run(
            ["sh", "-c", script([target], str(tmp_path / "absent.sock"), 5)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert result.returncode == 0 and "no gateway running here yet" in result.stdout


def test_the_plan_orders_ollama_hosts_into_waves_and_names_each_member() -> None:
    from servekit.placement import plan_fleet
    from servekit.spec import Fleet, Gateway, Gpu, LocalPath, SecretRef, Serve, Sources, SshHost

    fleet = Fleet(
        name="waves",
        machines=[
            SshHost(name="gw", address="10.0.0.1"),
            SshHost(name="gpu", address="10.0.0.2", gpu=Gpu(model="A100-80GB", count=2)),
            SshHost(name="box2", address="10.0.0.4"),
            SshHost(name="box1", address="10.0.0.3"),
        ],
        serve=[
            Serve(name="chat", model="llama-3.1-8b-instruct", hosts=["gpu"], gpus_per_replica=1),
            Serve(model="llama3.2:1b", engine="ollama", hosts=["box2", "box1"]),
        ],
        gateway=Gateway(host="gw", api_keys=SecretRef(env="KEYS")),
        engine_api_key=SecretRef(env="ENGINE_KEY"),
        sources=Sources(weights=LocalPath(path="/srv/models")),
    )
    hosts = plan_fleet(fleet).hosts
    gateway = hosts["gw"].gateway
    assert gateway is not None
    assert gateway.ollama_hosts == ["box2", "box1"]  # fleet order
    boxes = [hosts[name].ollama for name in ("box2", "box1")]
    assert [(o.wave, o.waves) for o in boxes if o] == [(0, 2), (1, 2)]
    engines = {(m.host, m.engine, m.replica) for m in gateway.members}
    assert engines == {
        ("gpu", "vllm", 0),
        ("gpu", "vllm", 1),
        ("box2", "ollama", 0),
        ("box1", "ollama", 1),
    }
    assert gateway.waves == 3  # vLLM: wave 0 starts, waves 1 and 2 roll replicas 0 and 1
    # without a gateway, Ollama hosts restart at once, with no wave loop
    alone = fleet.model_copy(update={"gateway": None})
    assert plan_fleet(alone).hosts["box1"].ollama.waves == 0  # type: ignore[union-attr]
