"""What does servekit's gateway (HAProxy) add to a request? Prints a markdown table (or --json).

Debian's HAProxy 2.6 (`-db`) runs the config servekit renders (`gateway_files`: one key, one pool
of one replica, the engines' key added; paths under a temporary directory) on core 1 (`taskset -c
1`: one thread); this process (servekit bench's client and closed loops) and the upstream run on
core 0. `--variants` adds a run of the rendered config with `option http-no-delay` removed (what
it costs: the kernel then holds the first token back).

1. Added TTFT: closed loops of 16, 256 and 1,000 streams (`--levels`) against the stand-in vLLM
   (fixed TTFT and token interval), straight and through the gateway, alternately: the difference
   of TTFT p50 and p99. Goal: at most 2 ms p50 and 5 ms p99 added at 256 streams.
2. Ceiling: aiohttp closed loops of `max_tokens` 1, `stream` false completions (which
   benchmarks/zero_delay_server.py, plus a `GET /health`, answers as a one-token stream). Client
   and upstream share core 0 and may be what limits the rate, so the ceiling is requests /
   HAProxy's CPU seconds (utime + stime, /proc/<pid>/stat). Goal: at least 3,000 requests/s.
3. HAProxy's CPU time per streamed token over a streaming run (64 tokens a request).

    .venv/bin/python benchmarks/gateway.py [--quick] [--levels 16 256 1000] [--json]
    .venv/bin/python benchmarks/gateway.py --affinity [--quick]   (prefix-cache hit rates only:
    least-outstanding vs prefix-affinity, benchmarks/gateway_affinity.py)

Needs `haproxy` (apt-get install haproxy), two cores and Linux (/proc, taskset).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from servekit.bench.client import Endpoint, StreamingClient
from servekit.bench.load import LoadShape, run_load
from servekit.bench.metrics import percentile
from servekit.bench.prompts import PromptMaker
from servekit.bench.runner import raise_open_files_limit
from servekit.gateway import GatewayLayout, gateway_files, parse_keys
from servekit.hostplan import GatewayHost, Route
from servekit.placement import plan_fleet
from servekit.spec import Fleet, Gateway, SecretRef, SshHost

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STANDINS = ROOT / "tests" / "standins"
MODEL = "bench-model"
ENGINE_KEY = "engine-key.0123456789"
CLIENT_KEY = "sk-bench-0123456789abcdef"
LOAD_CORE = 0
HAPROXY_CORE = 1
TTFT_S = 0.1  # the stand-in's fixed time to first token
TOKENS_PER_S = 10.0  # and its decode rate per stream
STREAM_TOKENS = 4
STREAM_INPUT = 32
USERS = 64  # closed loops against the zero-delay upstream
GOALS = {"added_p50_ms": 2.0, "added_p99_ms": 5.0, "ceiling_req_s": 3000.0}


class Proc:
    """A child process with its output in a log file, stopped by its PID."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        self._out.close()

    def cpu_s(self) -> float:
        """utime + stime so far, in seconds (/proc/<pid>/stat fields 14 and 15)."""
        stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], proc: Proc, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.log.read_text()[-2000:]}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def port_open(port: int) -> bool:
    return socket.socket().connect_ex(("127.0.0.1", port)) == 0


def upstream(work: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
    """An upstream on this process's core; its port is argv's last word."""
    proc = Proc(argv, work / f"{name}-{argv[-1]}.log", env)
    wait_for(lambda: port_open(int(argv[-1])), proc, name)
    return proc


def standin(work: Path, port: int) -> Proc:
    """The stand-in vLLM with a fixed TTFT and token interval."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(PYTHONPATH=str(STANDINS), VLLM_STANDIN_STARTUP_DELAY="0")
    env.update(VLLM_STANDIN_TTFT=str(TTFT_S), VLLM_STANDIN_TOKENS_PER_S=str(TOKENS_PER_S))
    argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", "standin/tiny",
            "--served-model-name", MODEL, "--api-key", ENGINE_KEY, "--max-num-seqs", "4096",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return upstream(work, "standin", argv, env)


def serve_zero(port: int) -> None:
    """Run zero_delay_server with `GET /health` answered 200 (HAProxy's health check)."""
    sys.path.insert(0, str(HERE))
    import zero_delay_server as zero

    handle = zero.Connection.handle
    zero.Connection.handle = lambda self, path, raw: (  # type: ignore[method-assign]
        self.reply(200, b"") if path == "/health" else handle(self, path, raw)
    )
    sys.argv = ["zero_delay_server", "--port", str(port)]
    zero.main()


class HAProxy:
    """HAProxy on core 1 with servekit's rendered config in front of one upstream."""

    def __init__(self, work: Path, upstream_port: int, no_delay: bool = False) -> None:
        root = work / f"gateway-{upstream_port}-{int(no_delay)}"
        self.port = free_port()
        fleet = Fleet(name="gwbench", machines=[SshHost(name="gw", address="127.0.0.1")],
                      gateway=Gateway(host="gw", api_keys=SecretRef(env="KEYS")))  # fmt: skip
        plan = plan_fleet(fleet).hosts["gw"]
        assert plan.gateway is not None
        route = Route(model=MODEL, upstreams=[f"127.0.0.1:{upstream_port}"], engine="vllm")
        gateway = GatewayHost(**{**plan.gateway.model_dump(), "routes": [route], "port": self.port})
        plan = plan.model_copy(update={"gateway": gateway})
        layout = GatewayLayout.under(str(root))
        keys = parse_keys([f"bench {CLIENT_KEY}"], [MODEL])
        for file in gateway_files(plan, keys, ENGINE_KEY, layout):
            Path(file.path).parent.mkdir(parents=True, exist_ok=True)
            content = file.content
            if no_delay and file.path == layout.config:  # not servekit's: what the option saves
                content = content.replace("    option http-no-delay\n", "")
            Path(file.path).write_text(content)
        self.socket = layout.runtime_socket
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        argv = ["taskset", "-c", str(HAPROXY_CORE), haproxy, "-f", layout.config, "-db"]
        self.proc = Proc(argv, root.with_suffix(".log"))
        wait_for(self.ready, self.proc, "haproxy")

    def runtime(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.socket)
            sock.sendall(command.encode() + b"\n")
            return sock.makefile("rb").read().decode()

    def ready(self) -> bool:
        """Listening, and its first health check found the replica UP."""
        if not (port_open(self.port) and Path(self.socket).exists()):
            return False
        rows = self.runtime("show stat").splitlines()
        return any(r.startswith("pool1,replica1,") and r.split(",")[17] == "UP" for r in rows)

    def threads(self) -> str:
        lines = self.runtime("show info").splitlines()
        return next((x.split(": ")[1] for x in lines if x.startswith("Nbthread:")), "?")


def p50_p99_ms(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return percentile(ordered, 50) * 1e3, percentile(ordered, 99) * 1e3


async def stream_run(
    url: str, key: str, users: int, prompts: int, tokens: int
) -> tuple[list[float], int, int]:
    """servekit bench's client and closed loops: (TTFTs in seconds, tokens received, failed)."""
    endpoint = Endpoint(url, "/v1/completions", MODEL, api_key=key, output_len=tokens)
    async with StreamingClient(endpoint, timeout_s=120) as client:
        await client.warm(users)
        shape = LoadShape(users=users, num_prompts=prompts)
        outcome = await run_load(client, PromptMaker(None, STREAM_INPUT, 1), shape, "gw", 1)
    ok = [t for t in outcome.timings if t.status == "ok" and t.chunk_times]
    tokens = sum(t.usage_output_tokens or len(t.chunk_times) for t in ok)
    return [t.chunk_times[0] - t.start for t in ok], tokens, len(outcome.timings) - len(ok)


async def plain_run(url: str, key: str, users: int, seconds: float) -> tuple[int, int, float]:
    """Closed loops of short non-streamed completions: (succeeded, failed, seconds)."""
    body = json.dumps({"model": MODEL, "prompt": "hello there", "max_tokens": 1,
                       "stream": False}).encode()  # fmt: skip
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    counts = [0, 0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        deadline = start + seconds

        async def user() -> None:
            while time.perf_counter() < deadline:
                try:
                    async with session.post(url + "/v1/completions", data=body,
                                            headers=headers) as response:  # fmt: skip
                        await response.read()
                        counts[response.status != 200] += 1
                except aiohttp.ClientError:
                    counts[1] += 1

        await asyncio.gather(*(user() for _ in range(users)))
        elapsed = time.perf_counter() - start
    return counts[0], counts[1], elapsed


VARIANTS = {"rendered": False}  # name -> without `option http-no-delay` (--variants)


@dataclass
class Level:
    config: str
    streams: int
    requests: int
    straight_ms: tuple[float, float]  # TTFT p50, p99
    gateway_ms: tuple[float, float]
    added_ms: tuple[float, float]
    failed: int
    haproxy_us_per_token: float


def added_ttft(work: Path, levels: list[int], repeats: int, per_user: int) -> list[Level]:
    """Part 1: the same closed loops straight to the stand-in and through each gateway."""
    port = free_port()
    server = standin(work, port)
    gateways: dict[str, HAProxy] = {}
    try:
        for name, no_delay in VARIANTS.items():
            gateways[name] = HAProxy(work, port, no_delay)
        runs = [one_level(gateways, port, users, repeats, per_user) for users in levels]
        return [level for run in runs for level in run]
    finally:
        for gateway in gateways.values():
            gateway.proc.stop()
        server.stop()


def one_level(
    gateways: dict[str, HAProxy], port: int, users: int, repeats: int, per_user: int
) -> list[Level]:
    prompts = max(users * per_user, 100)
    ttfts: dict[str, list[float]] = {name: [] for name in ["straight", *gateways]}
    failed, tokens = dict.fromkeys(ttfts, 0), dict.fromkeys(ttfts, 0)
    cpu = dict.fromkeys(ttfts, 0.0)
    for _ in range(repeats):  # alternately, so that drifting load hits each alike
        for name in ttfts:
            gateway = gateways.get(name)
            url = f"http://127.0.0.1:{gateway.port if gateway else port}"
            before = gateway.proc.cpu_s() if gateway else 0.0
            key = CLIENT_KEY if gateway else ENGINE_KEY
            got, count, bad = asyncio.run(stream_run(url, key, users, prompts, STREAM_TOKENS))
            cpu[name] += gateway.proc.cpu_s() - before if gateway else 0.0
            ttfts[name] += got
            failed[name] += bad
            tokens[name] += count
    s50, s99 = p50_p99_ms(ttfts["straight"])
    rows = []
    for name in gateways:
        g50, g99 = p50_p99_ms(ttfts[name])
        rows.append(Level(name, users, prompts * repeats, (s50, s99), (g50, g99),
                          (g50 - s50, g99 - s99), failed[name] + failed["straight"],
                          1e6 * cpu[name] / max(tokens[name], 1)))  # fmt: skip
        print(f"  {users} streams, {name}: added p50 {g50 - s50:+.2f} ms", file=sys.stderr)
    return rows


@dataclass
class Ceiling:
    config: str
    straight_req_s: float
    gateway_req_s: float
    haproxy_cpu_share: float
    ceiling_req_s: float
    failed: int
    stream_tokens: int
    haproxy_us_per_token: float
    haproxy_threads: str


def ceilings(work: Path, seconds: float, users: int) -> list[Ceiling]:
    """Parts 2 and 3 against the zero-delay upstream, for each gateway config."""
    port = free_port()
    server = upstream(work, "zero", [sys.executable, __file__, "--zero-upstream", str(port)])
    tops = []
    try:
        ok, bad, elapsed = asyncio.run(plain_run(f"http://127.0.0.1:{port}", ENGINE_KEY, users,
                                                 seconds))  # fmt: skip
        straight = ok / elapsed
        for name, no_delay in VARIANTS.items():
            gateway = HAProxy(work, port, no_delay)
            try:
                url = f"http://127.0.0.1:{gateway.port}"
                before = gateway.proc.cpu_s()
                ok, failed, elapsed = asyncio.run(plain_run(url, CLIENT_KEY, users, seconds))
                cpu = gateway.proc.cpu_s() - before
                before = gateway.proc.cpu_s()
                streams = max(int(seconds * 100), 200)
                _, tokens, bad_streams = asyncio.run(stream_run(url, CLIENT_KEY, 64, streams, 64))
                token_cpu = gateway.proc.cpu_s() - before
                threads = gateway.threads()
            finally:
                gateway.proc.stop()
            print(f"  {name}: {ok / elapsed:,.0f} req/s", file=sys.stderr)
            tops.append(Ceiling(name, straight, ok / elapsed, cpu / elapsed, ok / max(cpu, 1e-9),
                                failed + bad + bad_streams, tokens,
                                1e6 * token_cpu / max(tokens, 1), threads))  # fmt: skip
    finally:
        server.stop()
    return tops


def verdict(value: float, goal: float, at_most: bool) -> str:
    return "met" if (value <= goal if at_most else value >= goal) else "NOT met"


def markdown(levels: list[Level], tops: list[Ceiling], header: str) -> str:
    rows = [header, "", f"## Added TTFT (stand-in vLLM: TTFT {TTFT_S * 1e3:.0f} ms, "
            f"{TOKENS_PER_S:g} tokens/s, {STREAM_TOKENS} tokens a stream)", "",
            "| gateway config | streams | requests | straight p50 / p99 | gateway p50 / p99 "
            "| added p50 | added p99 | failed | HAProxy CPU / token | goal (256: ≤ 2 / 5 ms) |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for lv in levels:
        goal = (f"p50 {verdict(lv.added_ms[0], GOALS['added_p50_ms'], True)}, p99 "
                f"{verdict(lv.added_ms[1], GOALS['added_p99_ms'], True)}")  # fmt: skip
        rows.append(
            f"| {lv.config} | {lv.streams:,} | {lv.requests:,} | {lv.straight_ms[0]:.1f} / "
            f"{lv.straight_ms[1]:.1f} ms | {lv.gateway_ms[0]:.1f} / {lv.gateway_ms[1]:.1f} ms "
            f"| {lv.added_ms[0]:+.2f} ms | {lv.added_ms[1]:+.2f} ms | {lv.failed} "
            f"| {lv.haproxy_us_per_token:.1f} µs | {goal if lv.streams == 256 else ''} |"
        )
    rows += ["", f"## Ceiling (non-streamed, max_tokens 1) and CPU per streamed token "
             f"(zero-delay upstream, {USERS} closed loops)", "",
             "| gateway config | HAProxy threads | straight req/s | gateway req/s "
             "| HAProxy's share of core 1 | ceiling: req / HAProxy CPU s | HAProxy CPU / token "
             "(64-token streams) | failed |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for top in tops:
        goal = verdict(top.ceiling_req_s, GOALS["ceiling_req_s"], False)
        rows.append(
            f"| {top.config} | {top.haproxy_threads} | {top.straight_req_s:,.0f} "
            f"| {top.gateway_req_s:,.0f} | {top.haproxy_cpu_share:.0%} "
            f"| {top.ceiling_req_s:,.0f} ({goal}: ≥ {GOALS['ceiling_req_s']:,.0f}) "
            f"| {top.haproxy_us_per_token:.2f} µs ({top.stream_tokens:,} tokens) | {top.failed} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 256, 1000])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--variants", action="store_true", help="also without http-no-delay")
    parser.add_argument("--zero-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--affinity", action="store_true", help="prefix-cache hit rates only")
    args = parser.parse_args()
    if args.affinity:
        from gateway_affinity import affinity_report

        print(affinity_report([1] if args.quick else [1, 2, 3]))
        return
    if args.variants:
        VARIANTS["- http-no-delay"] = True
    if args.zero_upstream:
        serve_zero(args.zero_upstream)
        return
    if not (shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()):
        parser.error("haproxy not found: apt-get install haproxy")
    os.sched_setaffinity(0, {LOAD_CORE})
    raise_open_files_limit(4 * max(args.levels) + 1024)
    repeats, per_user, seconds = (1, 1, 3.0) if args.quick else (3, 2, 10.0)
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        levels = added_ttft(Path(tmp), args.levels, repeats, per_user)
        tops = ceilings(Path(tmp), seconds, users=USERS)
    header = (f"# servekit gateway: HAProxy on core {HAPROXY_CORE}, load generator and upstream "
              f"on core {LOAD_CORE}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at "
              f"the end{' (--quick)' if args.quick else ''}")  # fmt: skip
    if args.json:
        print(json.dumps({"levels": [asdict(lv) for lv in levels], "ceiling": [asdict(t) for t in
                          tops], "goals": GOALS, "quick": args.quick}, indent=1))  # fmt: skip
    else:
        print(markdown(levels, tops, header))


if __name__ == "__main__":
    main()
