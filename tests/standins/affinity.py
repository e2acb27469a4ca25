"""Prefix affinity measured: stand-in vLLM replicas with a small prefix cache behind the HAProxy
config servekit renders, a workload of shared system prompts, the hit rate read from the
replicas' own vLLM counters (`vllm:prefix_cache_hits` / `vllm:prefix_cache_queries`).

Used by tests/unit/test_gateway_affinity.py and `benchmarks/gateway.py --affinity`.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from servekit.gateway import GatewayLayout, gateway_files, haproxy, parse_keys
from servekit.hostplan import Route

from . import harness as h
from .gateway import loopback_plan, servers

MODEL = "affinity-model"
ENGINE_KEY = "engine-key.0123456789"
CLIENT_KEY = "sk-affinity-0123456789abcdef"
PREAMBLE = (
    "You are a helpful assistant of Example Corp. Answer briefly, politely and truthfully; "
    "say so when you do not know, never invent facts, and keep every answer in English."
)
"""Shared by every system prompt, as real ones share their opening lines (~170 bytes)."""


@dataclass(frozen=True)
class Workload:
    """Chat requests: one of `prompts` system prompts (chosen at random) and a distinct user
    message each, sent `concurrency` at a time through the gateway."""

    prompts: int = 8
    system_words: int = 300
    user_words: int = 20
    requests: int = 256
    concurrency: int = 16
    max_tokens: int = 8
    replicas: int = 4
    cache_blocks: int = 64
    """Each replica's prefix cache (`--num-gpu-blocks-override`, blocks of 16 tokens): about
    three of the system prompts, so a replica that sees all eight keeps evicting them."""
    seed: int = 13
    """Picks the prompts' order and their texts (so which replica each one hashes to)."""

    def system_prompt(self, index: int) -> str:
        words = " ".join(f"rule{index}x{k}" for k in range(self.system_words))
        return f"{PREAMBLE} Topic {index} (set {self.seed}): {words}"

    def bodies(self) -> list[dict[str, Any]]:
        rng = random.Random(self.seed)
        out = []
        for number in range(self.requests):
            system = self.system_prompt(rng.randrange(self.prompts))
            user = " ".join(f"q{number}w{k}" for k in range(self.user_words))
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            out.append({"model": MODEL, "messages": messages, "max_tokens": self.max_tokens})
        return out


@dataclass
class Result:
    routing: str
    hits: float
    queries: float
    requests: list[int] = field(default_factory=list)
    """Requests each replica served."""
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def most_over_fair(self) -> float:
        """The busiest replica's requests over the fair share (1.0: perfectly even)."""
        return max(self.requests) * len(self.requests) / sum(self.requests)


def replica(port: int, work: Path, workload: Workload) -> h.Proc:
    env = h.vllm_env(VLLM_STANDIN_TOKENS_PER_S="200", VLLM_STANDIN_TTFT="0.01")
    argv = h.vllm_argv(
        "serve", "standin/tiny", "--served-model-name", MODEL, "--api-key", ENGINE_KEY,
        "--block-size", "16", "--num-gpu-blocks-override", str(workload.cache_blocks),
        "--host", "127.0.0.1", "--port", str(port),
    )  # fmt: skip
    return h.Proc(argv, env, work, f"replica-{port}")


def write_config(
    root: Path, route: Route, port: int, prefix_bytes: int | None, balance_factor: int | None
) -> GatewayLayout:
    """servekit's files under root; the benchmark may vary the two affinity constants."""
    layout = GatewayLayout.under(str(root))
    keys = parse_keys([f"client {CLIENT_KEY}"], [MODEL])
    with (
        mock.patch.object(haproxy, "PREFIX_BYTES", prefix_bytes or haproxy.PREFIX_BYTES),
        mock.patch.object(haproxy, "BALANCE_FACTOR", balance_factor or haproxy.BALANCE_FACTOR),
    ):
        files = gateway_files(loopback_plan([route], port), keys, ENGINE_KEY, layout)
    for file in files:
        Path(file.path).parent.mkdir(parents=True, exist_ok=True)
        Path(file.path).write_text(file.content)
    return layout


def servers_up(socket_path: str) -> int:
    """How many of pool1's replicas HAProxy's runtime API shows UP."""
    rows = servers(socket_path)
    return sum(
        1 for name, row in rows.items() if name.startswith("pool1/") and row["status"] == "UP"
    )


def replica_counters(port: int) -> tuple[float, float, float]:
    """(prefix cache hits, queries, requests served) from one replica's /metrics."""
    status, _headers, body = h.request(port, "GET", "/metrics")
    assert status == 200
    found = {"vllm:prefix_cache_hits_total": 0.0, "vllm:prefix_cache_queries_total": 0.0,
             "vllm:request_success_total": 0.0}  # fmt: skip
    for line in body.decode().splitlines():
        name = line.split("{")[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    return (found["vllm:prefix_cache_hits_total"], found["vllm:prefix_cache_queries_total"],
            found["vllm:request_success_total"])  # fmt: skip


@dataclass
class Running:
    """HAProxy on `port` in front of stand-in replicas on `replicas` (ports)."""

    port: int
    replicas: list[int]

    def post(self, path: str, body: dict[str, Any]) -> int:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        return h.request(self.port, "POST", path, body, headers, timeout=30)[0]

    def counters(self) -> list[tuple[float, float, float]]:
        return [replica_counters(p) for p in self.replicas]


@contextlib.contextmanager
def gateway(
    work: Path,
    routing: str,
    workload: Workload,
    prefix_bytes: int | None = None,
    balance_factor: int | None = None,
) -> Iterator[Running]:
    """Fresh replicas and a fresh HAProxy with one pool of this routing, every replica UP."""
    free: set[int] = set()
    while len(free) < workload.replicas + 1:  # free_port may give one port twice
        free.add(h.free_port())
    gateway_port, *ports = sorted(free)
    root = work / f"gw{gateway_port}"  # short: HAProxy refuses socket paths over 97 bytes
    root.mkdir(parents=True)
    upstreams = [f"127.0.0.1:{p}" for p in ports]
    route = Route(model=MODEL, upstreams=upstreams, engine="vllm", routing=routing)
    layout = write_config(root, route, gateway_port, prefix_bytes, balance_factor)
    procs = [replica(p, root, workload) for p in ports]
    try:
        for p in ports:
            h.wait_http(p, "/health", timeout=20)
        haproxy_bin = shutil.which("haproxy") or "/usr/sbin/haproxy"
        procs.append(h.Proc([haproxy_bin, "-f", layout.config, "-db"], h.vllm_env(), root, "ha"))
        deadline = time.monotonic() + 20
        while not (Path(layout.runtime_socket).exists() and h.port_open(gateway_port)) or (
            servers_up(layout.runtime_socket) < len(ports)
        ):
            assert procs[-1].popen.poll() is None, procs[-1].stderr
            assert time.monotonic() < deadline, "replicas not UP at the gateway"
            time.sleep(0.1)
        yield Running(gateway_port, ports)
    finally:
        for proc in procs:
            proc.stop()


def measure(
    work: Path,
    routing: str,
    workload: Workload,
    prefix_bytes: int | None = None,
    balance_factor: int | None = None,
) -> Result:
    """The workload through a fresh gateway of this routing; the replicas' counters after."""
    with gateway(work, routing, workload, prefix_bytes, balance_factor) as gw:
        start = time.monotonic()
        with ThreadPoolExecutor(workload.concurrency) as pool:
            statuses = list(
                pool.map(lambda body: gw.post("/v1/chat/completions", body), workload.bodies())
            )
        seconds = time.monotonic() - start
        assert statuses == [200] * len(statuses), sorted(set(statuses))
        counters = gw.counters()
    return Result(
        routing,
        hits=sum(c[0] for c in counters),
        queries=sum(c[1] for c in counters),
        requests=[int(c[2]) for c in counters],
        seconds=seconds,
    )
