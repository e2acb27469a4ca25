"""How fast and how exact is `servekit bench`'s client, beside `vllm bench serve`? Prints tables.

Three parts, every client pinned to core 0 and every server to core 1 (`taskset`):

1. Capacity: closed loops against a zero-delay server (`benchmarks/zero_delay_server.py`):
   the highest request rate and streamed-token rate each client sustains on one core.
2. Timing error: closed loops against the stand-in vLLM server with a configured TTFT and token
   interval, which logs when each request arrived and when it wrote each chunk
   (`VLLM_STANDIN_CHUNK_LOG`). Each client's TTFT, inter-chunk gaps and E2E latency are compared
   with the server's own, request by request, so the client's error is separated from the
   server's lag. Wall-clock times: servekit writes them; `vllm bench serve` saves
   `time.perf_counter()` start times, which on Linux is the system-wide monotonic clock, mapped
   to wall time here.
3. Many streams: 1,000+ concurrent streams held by one client process.

Both clients get the same prompts' lengths through the same word-level tokenizer
(`benchmarks/standin_tokenizer.py`), whose count is the stand-in's.

    .venv/bin/python benchmarks/bench_client.py [--vllm /opt/vllm-bench-venv/bin/vllm]
        [--concurrency 16 64 256] [--streams 1200] [--skip-vllm] [--repeats 2]

The real vLLM 0.33.0 (for `vllm bench serve`) lives in its own virtual environment; it runs as a
client only, with VLLM_TARGET_DEVICE=cpu. Without it, pass --skip-vllm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STANDINS = ROOT / "tests" / "standins"
MODEL = "Qwen/Qwen3-0.6B"
sys.path.insert(0, str(HERE))

from standin_tokenizer import write_tokenizer  # noqa: E402

CLIENT_CORE = 0
SERVER_CORE = 1
PRIORITY = -15  # nice value when run as root

# The timed workload: a loaded GPU's pace, scaled down so that a run takes seconds.
TTFT_S = 0.2
TOKENS_PER_S = 20.0
TIMED_INPUT = 128
TIMED_OUTPUT = 32


def pinned(argv: list[str], core: int) -> list[str]:
    """On its own core and, as root, at a raised priority: other work on a shared machine then
    disturbs the clients (both alike) less."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        argv = ["taskset", "-c", str(core), *argv]
    if os.geteuid() == 0 and shutil.which("nice"):
        argv = ["nice", "-n", str(PRIORITY), *argv]
    return argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} not ready")


class Server:
    """A server process on core 1, stopped by its PID."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            pinned(argv, SERVER_CORE), env=env, stdout=self._log, stderr=self._log
        )
        wait_port(port, self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


def zero_delay_server(work: Path) -> Server:
    port = free_port()
    argv = [sys.executable, str(HERE / "zero_delay_server.py"), "--port", str(port)]
    return Server(argv, dict(os.environ), port, work / f"zero-{port}.log")


def standin(work: Path, chunk_log: Path, ttft: float, tokens_per_s: float) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(STANDINS),
        "VLLM_STANDIN_STARTUP_DELAY": "0",
        "VLLM_STANDIN_TTFT": str(ttft),
        "VLLM_STANDIN_TOKENS_PER_S": str(tokens_per_s),
        "VLLM_STANDIN_CHUNK_LOG": str(chunk_log),
    }
    argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "4096"]  # fmt: skip
    return Server(argv, env, port, work / f"standin-{port}.log")


@dataclass
class ClientRun:
    """One client's view of one run: its own summary and every request's wall-clock chunks."""

    client: str
    concurrency: int
    request_rate: float
    output_throughput: float
    completed: int
    failed: int
    peak_concurrency: int | None
    requests: dict[str, tuple[float, list[float]]]  # server request id → (sent, chunk times)


def run_servekit(
    url: str, users: int, prompts: int, input_len: int, output_len: int, tokenizer: Path,
    work: Path, loop: str = "uvloop",
) -> ClientRun:  # fmt: skip
    out = work / f"servekit-{loop}-{users}-{time.monotonic_ns()}.json"
    env = {**os.environ, "SERVEKIT_BENCH_LOOP": loop, "XDG_CACHE_HOME": str(work / "cache")}
    argv = [sys.executable, "-m", "servekit.cli", "bench", url, "concurrent",
            "--users", str(users), "--num-prompts", str(prompts), "--model", MODEL,
            "--input-len", str(input_len), "--output-len", str(output_len),
            "--tokenizer", str(tokenizer), "--endpoint", "completions", "--timeout", "120",
            "--json", str(out), "--quiet"]  # fmt: skip
    subprocess.run(pinned(argv, CLIENT_CORE), env=env, check=True, capture_output=True)
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    requests: dict[str, tuple[float, list[float]]] = {}
    for r in run["requests"]:
        if r["status"] != "ok":
            continue
        sent = run["started_at_unix"] + r["start_s"]
        times = [sent + r["ttft_s"]]
        for gap in r["itl_s"]:
            times.append(times[-1] + gap)
        requests[f"cmpl-{r['request_id']}"] = (sent, times)
    s = run["summary"]
    name = "servekit" if loop == "uvloop" else "servekit (asyncio loop)"
    return ClientRun(name, users, s["request_throughput"], s["output_throughput"],
                     s["completed"], s["failed"] + s["timed_out"], s["peak_concurrency"],
                     requests)  # fmt: skip


def run_vllm(
    vllm: str, url: str, users: int, prompts: int, input_len: int, output_len: int,
    tokenizer: Path, work: Path,
) -> ClientRun:  # fmt: skip
    name = f"vllm-{users}-{time.monotonic_ns()}.json"
    prefix = f"vb{time.monotonic_ns() % 10**8}-"
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    argv = [vllm, "bench", "serve", "--backend", "vllm", "--base-url", url, "--model", MODEL,
            "--tokenizer", str(tokenizer), "--dataset-name", "random",
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--num-prompts", str(prompts), "--max-concurrency", str(users), "--ignore-eos",
            "--request-id-prefix", prefix, "--save-result", "--save-detailed",
            "--result-dir", str(work), "--result-filename", name, "--disable-tqdm",
            "--ready-check-timeout-sec", "0"]  # fmt: skip
    subprocess.run(pinned(argv, CLIENT_CORE), env=env, check=True, capture_output=True)
    result = json.loads((work / name).read_text())
    offset = time.time() - time.perf_counter()  # CLOCK_REALTIME - CLOCK_MONOTONIC, system-wide
    requests: dict[str, tuple[float, list[float]]] = {}
    for i, (start, ttft, itls, error) in enumerate(
        zip(result["start_times"], result["ttfts"], result["itls"], result["errors"], strict=True)
    ):
        if error:
            continue
        sent = start + offset
        times = [sent + ttft]
        for gap in itls:
            times.append(times[-1] + gap)
        requests[f"cmpl-{prefix}{i}"] = (sent, times)
    return ClientRun("vllm bench serve", users, result["request_throughput"],
                     result["output_throughput"], result["completed"], result["failed"],
                     result.get("max_concurrent_requests"), requests)  # fmt: skip


def server_log(path: Path) -> dict[str, tuple[float, list[float]]]:
    """{request id: (arrival, [chunk write times])} from the stand-in's chunk log."""
    arrivals: dict[str, float] = {}
    tokens: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        stamp, rid, index, kind = line.split()
        if kind == "request":
            arrivals[rid] = float(stamp)
        elif kind == "token":
            tokens[rid].append((int(index), float(stamp)))
    return {
        rid: (arrivals[rid], [t for _, t in sorted(chunks)])
        for rid, chunks in tokens.items()
        if rid in arrivals
    }


@dataclass
class TimingError:
    matched: int
    ttft_true_ms: float
    ttft_error_ms: float
    arrival_delay_ms: float  # client sent → server stamped the arrival (both sides' queues)
    first_lag_ms: float  # server wrote the first token → client read it
    gap_true_ms: float
    gap_abs_error_ms: float
    itl_p99_true_ms: float
    itl_p99_error_ms: float
    tpot_true_ms: float
    tpot_error_ms: float
    e2el_true_ms: float
    e2el_error_ms: float
    lag_p99_ms: float

    def pct(self, error: float, truth: float) -> str:
        return f"{error:+.2f} ms ({100 * error / truth:+.1f} %)"


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * 0.99
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timing_error(run: ClientRun, server: dict[str, tuple[float, list[float]]]) -> TimingError:
    """The client's TTFT, gaps and E2E latency against the server's, request by request."""
    ttft_true, ttft_err, e2el_true, e2el_err, tpot_true, tpot_err = [], [], [], [], [], []
    arrival_delay, first_lag = [], []
    gaps_true, gaps_client, gap_err, lags = [], [], [], []
    for rid, (sent, chunks) in run.requests.items():
        if rid not in server:
            continue
        arrived, written = server[rid]
        if len(written) != len(chunks):
            continue
        ttft_true.append(written[0] - arrived)
        ttft_err.append((chunks[0] - sent) - (written[0] - arrived))
        arrival_delay.append(arrived - sent)
        first_lag.append(chunks[0] - written[0])
        e2el_true.append(written[-1] - arrived)
        e2el_err.append((chunks[-1] - sent) - (written[-1] - arrived))
        if len(chunks) > 1:
            true_tpot = (written[-1] - written[0]) / (len(written) - 1)
            tpot_true.append(true_tpot)
            tpot_err.append((chunks[-1] - chunks[0]) / (len(chunks) - 1) - true_tpot)
        for k in range(1, len(chunks)):
            true_gap = written[k] - written[k - 1]
            client_gap = chunks[k] - chunks[k - 1]
            gaps_true.append(true_gap)
            gaps_client.append(client_gap)
            gap_err.append(abs(client_gap - true_gap))
        lags += [c - w for c, w in zip(chunks, written, strict=True)]
    if not ttft_true:
        raise RuntimeError(f"{run.client}: no request matched the server's log")
    ms = 1e3
    return TimingError(
        matched=len(ttft_true),
        ttft_true_ms=statistics.mean(ttft_true) * ms,
        ttft_error_ms=statistics.mean(ttft_err) * ms,
        arrival_delay_ms=statistics.mean(arrival_delay) * ms,
        first_lag_ms=statistics.mean(first_lag) * ms,
        gap_true_ms=statistics.mean(gaps_true) * ms,
        gap_abs_error_ms=statistics.mean(gap_err) * ms,
        itl_p99_true_ms=p99(gaps_true) * ms,
        itl_p99_error_ms=(p99(gaps_client) - p99(gaps_true)) * ms,
        tpot_true_ms=statistics.mean(tpot_true) * ms,
        tpot_error_ms=statistics.mean(tpot_err) * ms,
        e2el_true_ms=statistics.mean(e2el_true) * ms,
        e2el_error_ms=statistics.mean(e2el_err) * ms,
        lag_p99_ms=p99(lags) * ms,
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def capacity(args: argparse.Namespace, work: Path, tokenizer: Path) -> None:
    print("\n## 1. Capacity on one core: zero-delay server, closed loops, 32 in / 64 out tokens\n")
    server = zero_delay_server(work)
    rows = []
    try:
        for users in args.concurrency:
            prompts = max(args.capacity_prompts, 4 * users)
            runs: dict[str, list[ClientRun]] = defaultdict(list)
            for _ in range(args.repeats):
                for loop in ("uvloop", "asyncio"):
                    run = run_servekit(server.url, users, prompts, 32, 64, tokenizer, work, loop)
                    runs[run.client].append(run)
                if not args.skip_vllm:
                    run = run_vllm(args.vllm, server.url, users, prompts, 32, 64, tokenizer, work)
                    runs[run.client].append(run)
            for client, done in runs.items():
                best = max(done, key=lambda r: r.request_rate)
                rows.append([client, str(users), f"{best.request_rate:,.0f}",
                             f"{best.output_throughput:,.0f}", str(best.failed)])  # fmt: skip
                print(f"  {client} at {users}: {best.request_rate:,.0f} req/s", file=sys.stderr)
    finally:
        server.stop()
    print(table(["client", "users", "req/s", "streamed tok/s", "failed"], rows))
    print(f"\n(best of {args.repeats} runs of {args.capacity_prompts}+ requests each)")


def median_error(errors: list[TimingError]) -> TimingError:
    """Field by field, the median over repeated runs (the machine may be shared and noisy)."""
    fields = TimingError.__dataclass_fields__
    return TimingError(**{f: statistics.median(getattr(e, f) for e in errors) for f in fields})


def accuracy(args: argparse.Namespace, work: Path, tokenizer: Path) -> None:
    print(
        f"\n## 2. Timing error: stand-in vLLM, TTFT {TTFT_S * 1e3:.0f} ms, a token every "
        f"{1e3 / TOKENS_PER_S:.0f} ms, {TIMED_INPUT} in / {TIMED_OUTPUT} out tokens\n"
    )
    clients = ["servekit"] + ([] if args.skip_vllm else ["vllm bench serve"])
    found: dict[tuple[str, int], list[tuple[ClientRun, TimingError]]] = defaultdict(list)
    for repeat in range(args.repeats):
        for users in args.concurrency:
            prompts = 4 * users
            for client in clients:
                log = work / f"chunks-{client.split()[0]}-{users}-{repeat}.log"
                server = standin(work, log, TTFT_S, TOKENS_PER_S)
                try:
                    if client == "servekit":
                        run = run_servekit(server.url, users, prompts, TIMED_INPUT,
                                           TIMED_OUTPUT, tokenizer, work)  # fmt: skip
                    else:
                        run = run_vllm(args.vllm, server.url, users, prompts, TIMED_INPUT,
                                       TIMED_OUTPUT, tokenizer, work)  # fmt: skip
                finally:
                    server.stop()
                err = timing_error(run, server_log(log))
                found[(client, users)].append((run, err))
                print(f"  {client} at {users}: TTFT error {err.ttft_error_ms:+.2f} ms, ITL p99 "
                      f"{err.itl_p99_error_ms:+.2f} ms", file=sys.stderr)  # fmt: skip
    rows = []
    for (client, users), results in found.items():
        err = median_error([e for _, e in results])
        rate = statistics.median(r.request_rate for r, _ in results)
        tokens = statistics.median(r.output_throughput for r, _ in results)
        matched = min(e.matched for _, e in results)
        rows.append([
            client, str(users), f"{rate:,.1f}", f"{tokens:,.0f}", f"{matched}/{4 * users}",
            err.pct(err.ttft_error_ms, err.ttft_true_ms),
            f"{err.arrival_delay_ms:.1f} + {err.first_lag_ms:.1f} ms",
            err.pct(err.tpot_error_ms, err.tpot_true_ms),
            f"{err.gap_abs_error_ms:.2f} ms ({100 * err.gap_abs_error_ms / err.gap_true_ms:.1f} %)",
            err.pct(err.itl_p99_error_ms, err.itl_p99_true_ms),
            err.pct(err.e2el_error_ms, err.e2el_true_ms),
            f"{err.lag_p99_ms:.2f} ms",
        ])  # fmt: skip
    rows.sort(key=lambda row: (int(row[1]), row[0]))
    print(table(["client", "users", "req/s", "out tok/s", "matched", "TTFT error",
                 "= to server + 1st chunk back", "TPOT error", "ITL error (mean abs)",
                 "ITL p99 error", "E2EL error", "chunk lag p99"], rows))  # fmt: skip
    print(
        f"\nMedians over {args.repeats} runs. Each error is the client's value minus the server's "
        "(TTFT and E2EL from the request's arrival, TPOT and gaps from the server's chunk "
        "writes), mean over requests; the percentage is of the server's value. TTFT error is "
        "the time from the client's send stamp to the server's arrival stamp (the client "
        "writing, the server reading: under a burst of requests mostly the server's queue) "
        "plus the delay of the first chunk back."
    )


def many_streams(args: argparse.Namespace, work: Path, tokenizer: Path) -> None:
    users = args.streams
    print(f"\n## 3. {users} concurrent streams (TTFT 500 ms, 10 tokens/s, 40 tokens each)\n")
    rows = []
    for client in ["servekit"] + ([] if args.skip_vllm else ["vllm bench serve"]):
        log = work / f"chunks-many-{client.split()[0]}.log"
        server = standin(work, log, 0.5, 10.0)
        try:
            if client == "servekit":
                run = run_servekit(server.url, users, users, 16, 40, tokenizer, work)
            else:
                run = run_vllm(args.vllm, server.url, users, users, 16, 40, tokenizer, work)
        finally:
            server.stop()
        err = timing_error(run, server_log(log))
        rows.append([
            client, str(users), str(run.completed), str(run.failed), str(run.peak_concurrency),
            err.pct(err.ttft_error_ms, err.ttft_true_ms),
            f"{err.arrival_delay_ms:.1f} + {err.first_lag_ms:.1f} ms",
            err.pct(err.tpot_error_ms, err.tpot_true_ms),
            err.pct(err.itl_p99_error_ms, err.itl_p99_true_ms),
            err.pct(err.e2el_error_ms, err.e2el_true_ms),
        ])  # fmt: skip
    print(table(["client", "streams", "completed", "failed", "peak concurrency", "TTFT error",
                 "= to server + 1st chunk back", "TPOT error", "ITL p99 error", "E2EL error"],
                rows))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", default="/opt/vllm-bench-venv/bin/vllm")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--streams", type=int, default=1200)
    parser.add_argument("--capacity-prompts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 12")
    args = parser.parse_args()
    if not args.skip_vllm and not Path(args.vllm).exists():
        parser.error(f"{args.vllm} not found: install vllm==0.33.0 there, or pass --skip-vllm")
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        work = Path(tmp)
        tokenizer = write_tokenizer(work / "tokenizer")
        print(f"# servekit bench client: {os.cpu_count()} cores, client on core {CLIENT_CORE}, "
              f"server on core {SERVER_CORE}, Python {sys.version.split()[0]}")  # fmt: skip
        if "1" in args.parts:
            capacity(args, work, tokenizer)
        if "2" in args.parts:
            accuracy(args, work, tokenizer)
        if "3" in args.parts:
            many_streams(args, work, tokenizer)


if __name__ == "__main__":
    main()
