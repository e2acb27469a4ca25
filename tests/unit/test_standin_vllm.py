"""The stand-in vLLM behaves like vLLM 0.33.0 where servekit depends on it.

Each test runs the stand-in from the source tree in a subprocess on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from standins import build
from standins import harness as h

STANDINS = Path(__file__).resolve().parents[1] / "standins"


pytestmark = pytest.mark.timeout(60)
READY = "Application startup complete."


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        h.vllm_argv(*args),
        env=env or h.vllm_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def parsed(*args: str) -> dict[str, Any]:
    """The namespace `vllm serve ARGS` parses to, from a subprocess."""
    code = (
        "import json, sys; from vllm._flags import parse_serve_args; "
        "print(json.dumps(vars(parse_serve_args(sys.argv[1:]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=h.vllm_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def serve(tmp_path: Path, name: str, *args: str, port: int | None = None, **env: str) -> Any:
    """Context manager: `vllm serve ARGS --port P`, ready when it logs startup complete."""
    port = port or h.free_port()
    argv = h.vllm_argv("serve", *args, "--host", "127.0.0.1", "--port", str(port))
    ctx = h.running(argv, h.vllm_env(**env), tmp_path, name, ready_log=READY)
    return ctx


def metrics(port: int) -> dict[str, float]:
    status, headers, body = h.request(port, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def metrics_text(port: int) -> str:
    status, _headers, body = h.request(port, "GET", "/metrics")
    assert status == 200
    return str(body.decode())


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    for key, value in values.items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            return value
    raise KeyError(name)


# --- command line --------------------------------------------------------------------------


def test_version_and_argparse_errors() -> None:
    assert run_cli("--version").stdout.strip() == "0.33.0"

    bad = run_cli("serve", "org/m", "--no-such-flag", "3")
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[0] == "usage: vllm serve [model_tag] [options]"
    assert "vllm serve: error: unrecognized arguments: --no-such-flag 3" in bad.stderr

    choice = run_cli("serve", "org/m", "--dtype", "fp99")
    assert choice.returncode == 2
    assert "argument --dtype: invalid choice: 'fp99'" in choice.stderr

    # --no-enable-prefix-caching is not a 0.33.0 spelling (it is --disable-prefix-caching).
    assert run_cli("serve", "org/m", "--no-enable-prefix-caching").returncode == 2


def test_flag_forms_match_vllm() -> None:
    ns = parsed(
        "org/m",
        "-tp",
        "4",
        "--pipeline_parallel_size=2",
        "--disable-prefix-caching",
        "--api-key",
        "k1",
        "k2",
        "--served-model-name",
        "a",
        "b",
        "--max-model-len",
        "1K",
        "--hf-token",
        "--compilation-config.mode",
        "3",
        "-O2",
        "--kv-cache-dtype=fp8",
    )
    assert ns["model_tag"] == "org/m"
    assert ns["tensor_parallel_size"] == 4 and ns["pipeline_parallel_size"] == 2
    assert ns["enable_prefix_caching"] is False
    assert ns["api_key"] == ["k1", "k2"] and ns["served_model_name"] == ["a", "b"]
    assert ns["max_model_len"] == 1024
    assert ns["hf_token"] is True
    assert json.loads(ns["compilation_config"]) == {"mode": 3}
    assert ns["optimization_level"] == "2"
    assert ns["kv_cache_dtype"] == "fp8"


def test_config_yaml_merges_with_cli_precedence(tmp_path: Path) -> None:
    config = tmp_path / "vllm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "org/from-config",
                "port": 9001,
                "max_model_len": 2048,
                "tensor-parallel-size": 2,
                "enable_prefix_caching": False,
                "served-model-name": ["x", "y"],
                "enforce-eager": True,
            }
        )
    )
    ns = parsed("--config", str(config), "--port", "9002", "--tensor-parallel-size", "8")
    assert ns["port"] == 9002  # command line wins
    assert ns["tensor_parallel_size"] == 8
    assert ns["max_model_len"] == 2048  # from the file
    assert ns["model"] == "org/from-config" and ns["model_tag"] is None
    assert ns["enable_prefix_caching"] is False and ns["enforce_eager"] is True
    assert ns["served_model_name"] == ["x", "y"]

    ns = parsed("org/positional", f"--config={config}")
    assert ns["model_tag"] == "org/positional" and ns["port"] == 9001

    config.write_text("model: org/m\nno_such_option: 1\n")
    bad = run_cli("serve", "--config", str(config))
    assert bad.returncode == 2
    assert "vllm serve: error: unrecognized arguments: --no-such-option" in bad.stderr


def test_validation_errors_exit_1(tmp_path: Path) -> None:
    cases = {
        ("--nnodes", "2", "--node-rank", "0", "--headless", "-tp", "2"): "--headless",
        ("--nnodes", "2", "--node-rank", "2", "--headless", "-tp", "2"): "node_rank (2)",
        ("--nnodes", "2", "-tp", "3"): "divisible by nnodes",
    }
    for args, message in cases.items():
        proc = run_cli("serve", "org/m", *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert message in proc.stderr


# --- weights ----------------------------------------------------------------------------------


def test_weights_local_dir_and_offline_cache(tmp_path: Path) -> None:
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    proc = run_cli("serve", str(model_dir))
    assert proc.returncode == 1
    assert "config.json" in proc.stderr

    (model_dir / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    too_long = run_cli("serve", str(model_dir), "--max-model-len", "8192")
    assert too_long.returncode == 1
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in too_long.stderr
    with serve(tmp_path, "local", str(model_dir)) as srv:
        body = json.loads(h.request(srv_port(srv), "GET", "/v1/models")[2])
        assert body["data"][0]["max_model_len"] == 4096
        assert body["data"][0]["id"] == str(model_dir)

    hf_home = tmp_path / "hf"
    offline = h.vllm_env(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home))
    missing = run_cli("serve", "org/model", env=offline)
    assert missing.returncode == 1
    assert "models--org--model" in missing.stderr
    repo = hf_home / "hub" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    with serve(tmp_path, "offline", "org/model", HF_HUB_OFFLINE="1", HF_HOME=str(hf_home)) as srv:
        assert h.request(srv_port(srv), "GET", "/health")[0] == 200


def srv_port(proc: Any) -> int:
    """The --port a served process was given."""
    argv = proc.popen.args
    return int(argv[argv.index("--port") + 1])


# --- HTTP surface -----------------------------------------------------------------------------


def test_readiness_logs_and_sigterm(tmp_path: Path) -> None:
    port = h.free_port()
    argv = h.vllm_argv("serve", "org/m", "--port", str(port), "--api-key", "sekrit-value")
    env = h.vllm_env(VLLM_STANDIN_STARTUP_DELAY="1.0")
    proc = h.Proc(argv, env, tmp_path, "ready")
    try:
        proc.wait_log("non-default args")
        assert not h.port_open(port)  # bound, not listening: connect is refused
        proc.wait_log(READY)
        assert h.port_open(port)
        h.wait_http(port)
        assert f"Starting vLLM API server 0 on http://0.0.0.0:{port}" in proc.stderr
        assert "Effective args" in proc.stderr
        assert "sekrit-value" not in proc.stderr + proc.stdout
        status, _, body = h.request(port, "GET", "/version")
        assert status == 200 and json.loads(body) == {"version": "0.33.0"}
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(10) == 0
    finally:
        proc.stop()


def test_api_key_guards_v1_only(tmp_path: Path) -> None:
    with serve(tmp_path, "keys", "org/m", "--api-key", "k1", "k2", VLLM_API_KEY="from-env") as srv:
        port = srv_port(srv)
        for path in ("/health", "/metrics", "/version"):
            assert h.request(port, "GET", path)[0] == 200, path
        status, _, body = h.request(port, "GET", "/v1/models")
        assert status == 401 and json.loads(body) == {"error": "Unauthorized"}
        bearer = {"Authorization": "Bearer from-env"}  # the command line wins over the env var
        assert h.request(port, "GET", "/v1/models", headers=bearer)[0] == 401
        assert (
            h.request(port, "GET", "/v1/models", headers={"Authorization": "Bearer k2"})[0] == 200
        )
    with serve(tmp_path, "envkey", "org/m", VLLM_API_KEY="from-env") as srv:
        port = srv_port(srv)
        assert h.request(port, "GET", "/v1/models")[0] == 401
        assert (
            h.request(port, "GET", "/v1/models", headers={"Authorization": "Bearer from-env"})[0]
            == 200
        )


def _chunks(events: list[tuple[float, str]]) -> tuple[list[dict[str, Any]], list[str]]:
    assert events[-1][1] == "[DONE]"
    objs = [json.loads(data) for _, data in events[:-1]]
    texts = []
    for obj in objs:
        for choice in obj["choices"]:
            text = choice.get("text", choice.get("delta", {}).get("content"))
            if text:
                texts.append(text)
    return objs, texts


def test_streaming_shapes_and_token_counts(tmp_path: Path) -> None:
    with serve(
        tmp_path,
        "stream",
        "org/m",
        "--served-model-name",
        "first",
        "second",
        VLLM_STANDIN_EOS_AFTER="3",
        VLLM_STANDIN_TOKENS_PER_S="0",
        VLLM_STANDIN_TTFT="0",
    ) as srv:
        port = srv_port(srv)
        models = json.loads(h.request(port, "GET", "/v1/models")[2])
        assert [m["id"] for m in models["data"]] == ["first", "second"]

        chat = {
            "model": "second",
            "messages": [{"role": "user", "content": "Hello, world!"}],
            "max_tokens": 7,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        objs, texts = _chunks(h.sse_events(port, "/v1/chat/completions", chat))
        assert len(texts) == 7
        assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(o["object"] == "chat.completion.chunk" and o["model"] == "second" for o in objs)
        assert len({o["id"] for o in objs}) == 1 and objs[0]["id"].startswith("chatcmpl-")
        token_chunks = [o for o in objs if o["choices"]]
        assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert objs[-1]["choices"] == []
        assert objs[-1]["usage"] == {
            "prompt_tokens": 10,
            "completion_tokens": 7,
            "total_tokens": 17,
        }  # 4 tokens + 4 per message + 2

        del chat["ignore_eos"]  # a natural end after VLLM_STANDIN_EOS_AFTER tokens
        objs, texts = _chunks(h.sse_events(port, "/v1/chat/completions", chat))
        assert len(texts) == 3
        assert [o for o in objs if o["choices"]][-1]["choices"][0]["finish_reason"] == "stop"
        chat["min_tokens"] = 5
        assert len(_chunks(h.sse_events(port, "/v1/chat/completions", chat))[1]) == 5

        comp = {
            "model": "first",
            "prompt": "one two three",
            "max_tokens": 12,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        objs, texts = _chunks(h.sse_events(port, "/v1/completions", comp))
        assert len(texts) == 12 and objs[0]["object"] == "text_completion"
        assert objs[-1]["usage"]["prompt_tokens"] == 3
        assert objs[-1]["usage"]["completion_tokens"] == 12
        # The output re-tokenises to exactly completion_tokens words.
        assert len("".join(texts).split()) == 12

        del comp["stream"], comp["stream_options"]
        status, _, body = h.request(port, "POST", "/v1/completions", comp)
        result = json.loads(body)
        assert status == 200 and result["usage"]["completion_tokens"] == 12
        assert result["choices"][0]["finish_reason"] == "length"

        status, _, body = h.request(port, "POST", "/v1/completions", {**comp, "model": "nope"})
        assert status == 404 and json.loads(body)["error"]["type"] == "NotFoundError"


def test_max_model_len_rejects_long_requests(tmp_path: Path) -> None:
    with serve(tmp_path, "maxlen", "org/m", "--max-model-len", "16") as srv:
        port = srv_port(srv)
        status, _, body = h.request(
            port, "POST", "/v1/completions", {"prompt": "a b c d", "max_tokens": 13}
        )
        error = json.loads(body)["error"]
        assert status == 400 and error["type"] == "BadRequestError" and error["code"] == 400
        assert "maximum context length is 16 tokens" in error["message"]
        ok = h.request(port, "POST", "/v1/completions", {"prompt": "a b c d", "max_tokens": 12})
        assert ok[0] == 200


def test_ttft_and_decode_rate_are_honoured(tmp_path: Path) -> None:
    log = tmp_path / "chunks.log"
    with serve(
        tmp_path,
        "timing",
        "org/m",
        VLLM_STANDIN_TTFT="0.3",
        VLLM_STANDIN_TOKENS_PER_S="20",
        VLLM_STANDIN_CHUNK_LOG=str(log),
    ) as srv:
        port = srv_port(srv)
        body = {"prompt": "hi", "max_tokens": 10, "ignore_eos": True, "stream": True}
        sent = time.monotonic()
        events = h.sse_events(port, "/v1/completions", body)
        tokens = [t for t, data in events if data != "[DONE]"]
        assert len(tokens) == 10
        assert 0.28 <= tokens[0] - sent <= 0.6, tokens[0] - sent
        decode = tokens[-1] - tokens[0]  # 9 intervals of 1/20 s
        assert 0.40 <= decode <= 0.75, decode
        rid = json.loads(events[0][1])["id"]

        lines = [line.split() for line in log.read_text().splitlines()]
        token_lines = [ln for ln in lines if ln[3] == "token"]
        assert [int(ln[2]) for ln in token_lines] == list(range(10))
        assert {ln[1] for ln in lines} == {rid}
        stamps = [float(ln[0]) for ln in token_lines]
        assert stamps == sorted(stamps)
        assert 0.40 <= stamps[-1] - stamps[0] <= 0.75
        assert lines[-1][3] == "done"


def test_metrics_count_served_requests(tmp_path: Path) -> None:
    with serve(
        tmp_path,
        "metrics",
        "org/m",
        "--served-model-name",
        "svc",
        VLLM_STANDIN_TOKENS_PER_S="0",
        VLLM_STANDIN_TTFT="0",
    ) as srv:
        port = srv_port(srv)
        before = metrics(port)
        assert metric(before, "vllm:num_requests_running", model_name="svc") == 0
        assert metric(before, "vllm:num_requests_waiting", model_name="svc") == 0
        assert metric(before, "vllm:cache_config_info") == 1
        for _ in range(3):
            h.sse_events(
                port, "/v1/completions", {"prompt": "a b", "max_tokens": 4, "stream": True}
            )
        h.request(
            port,
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
        )
        after = metrics(port)

        def grew(name: str, **labels: str) -> float:
            return metric(after, name, **labels) - metric(before, name, **labels)

        assert grew("vllm:prompt_tokens_total") == 3 * 2 + (1 + 4 + 2)
        assert grew("vllm:generation_tokens_total") == 3 * 4 + 5
        assert grew("vllm:request_success_total", finished_reason="length") == 4
        assert grew("vllm:time_to_first_token_seconds_count") == 4
        assert grew("vllm:e2e_request_latency_seconds_count") == 4
        assert grew("vllm:inter_token_latency_seconds_count") == 3 * 3 + 4
        assert metric(after, "vllm:e2e_request_latency_seconds_bucket", le="+Inf") == 4
        assert metric(after, "vllm:kv_cache_usage_perc") == 0


def test_prefix_cache_counts_reused_blocks_in_vllms_counters(tmp_path: Path) -> None:
    """Blocks of 16 tokens, room for 4: a second request with the same 64-token system message
    reuses its 4 blocks; a different system message evicts them; token ids work the same way."""
    system = {"role": "system", "content": " ".join(f"w{i}" for i in range(60))}  # 4 blocks
    other = {"role": "system", "content": " ".join(f"v{i}" for i in range(60))}
    args = ("org/m", "--block-size", "16", "--num-gpu-blocks-override", "4")
    with serve(tmp_path, "prefix", *args, VLLM_STANDIN_TOKENS_PER_S="0") as srv:
        port = srv_port(srv)
        text = metrics_text(port)
        assert "# TYPE vllm:prefix_cache_queries counter" in text
        assert "# TYPE vllm:prefix_cache_hits counter" in text

        def chat(first: dict[str, str], user: str) -> tuple[float, float]:
            """(queried, hit) tokens of one request, from the counters."""
            before = metrics(port)
            messages = [first, {"role": "user", "content": user}]
            status, _h, data = h.request(
                port, "POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 1}
            )
            assert status == 200
            after = metrics(port)
            queried = metric(after, "vllm:prefix_cache_queries_total", model_name="org/m") - (
                metric(before, "vllm:prefix_cache_queries_total", model_name="org/m")
            )
            assert queried == json.loads(data)["usage"]["prompt_tokens"] == 64 + 5 + 2
            hits = metric(after, "vllm:prefix_cache_hits_total") - metric(
                before, "vllm:prefix_cache_hits_total"
            )
            return queried, hits

        assert chat(system, "first")[1] == 0
        assert chat(system, "second")[1] == 64
        assert chat(other, "third")[1] == 0  # evicts the first system message's blocks
        assert chat(system, "fourth")[1] == 0
        ids = {"prompt": list(range(33)), "max_tokens": 1}
        for expected in (0, 32):  # the last token is always computed: 2 of 3 blocks at most
            before = metric(metrics(port), "vllm:prefix_cache_hits_total")
            assert h.request(port, "POST", "/v1/completions", ids)[0] == 200
            assert metric(metrics(port), "vllm:prefix_cache_hits_total") - before == expected
    with serve(tmp_path, "noprefix", "org/m", "--disable-prefix-caching") as srv:
        port = srv_port(srv)
        for user in ("a", "b"):
            body = {"messages": [system, {"role": "user", "content": user}], "max_tokens": 1}
            assert h.request(port, "POST", "/v1/chat/completions", body)[0] == 200
        assert metric(metrics(port), "vllm:prefix_cache_hits_total") == 0


def test_fail_after_tokens_ends_stream_with_error(tmp_path: Path) -> None:
    with serve(
        tmp_path, "fail", "org/m", VLLM_STANDIN_FAIL_AFTER_TOKENS="3", VLLM_STANDIN_TOKENS_PER_S="0"
    ) as srv:
        port = srv_port(srv)
        events = h.sse_events(
            port, "/v1/completions", {"prompt": "x", "max_tokens": 10, "stream": True}
        )
        assert events[-1][1] == "[DONE]"
        payloads = [json.loads(d) for _, d in events[:-1]]
        assert len([p for p in payloads if "choices" in p]) == 3
        assert payloads[-1]["error"]["code"] == 500
        status, _, _ = h.request(port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 10})
        assert status == 500
        assert metric(metrics(port), "vllm:request_success_total", finished_reason="error") == 2


def test_holds_many_concurrent_streams(tmp_path: Path) -> None:
    """A thousand simultaneous streams, each flushed token by token, all running at once."""
    streams, tokens = 1000, 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * streams:  # this client holds a socket per stream too
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * streams), hard))
    with serve(
        tmp_path, "load", "org/m", VLLM_STANDIN_TOKENS_PER_S="25", VLLM_STANDIN_TTFT="0.2"
    ) as srv:
        port = srv_port(srv)
        body = json.dumps(
            {"prompt": "x", "max_tokens": tokens, "ignore_eos": True, "stream": True}
        ).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        peak = 0.0
        done = 0

        async def one() -> int:
            nonlocal done
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            await writer.drain()
            count = 0
            while True:
                line = await reader.readline()
                if not line or line.startswith(b"data: [DONE]"):
                    break
                count += line.startswith(b"data: {")
            writer.close()
            done += 1
            return count

        async def watch() -> None:
            nonlocal peak
            loop = asyncio.get_running_loop()
            while done < streams:
                values = await loop.run_in_executor(None, metrics, port)
                peak = max(peak, metric(values, "vllm:num_requests_running"))
                await asyncio.sleep(0.1)

        async def main() -> list[int]:
            watcher = asyncio.ensure_future(watch())
            counts = await asyncio.gather(*(one() for _ in range(streams)))
            await watcher
            return counts

        started = time.monotonic()
        counts = asyncio.run(main())
        elapsed = time.monotonic() - started
        assert counts == [tokens] * streams
        assert peak >= streams * 0.8  # they really ran at the same time
        assert elapsed < 10, elapsed


# --- multi-node -------------------------------------------------------------------------------


def test_multinode_head_waits_for_worker(tmp_path: Path) -> None:
    api_port, master_port = h.free_port(), h.free_port()
    common = (
        "org/m",
        "-tp",
        "2",
        "--nnodes",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(master_port),
    )
    env = h.vllm_env(
        VLLM_STANDIN_NODE_TIMEOUT="2", VLLM_ENGINE_READY_TIMEOUT_S="30", NCCL_SOCKET_IFNAME="lo"
    )
    head = h.Proc(
        h.vllm_argv("serve", *common, "--node-rank", "0", "--port", str(api_port)),
        env,
        tmp_path,
        "head",
    )
    worker = None
    try:
        head.wait_log("waiting for 1 worker node")
        assert "NCCL_SOCKET_IFNAME=lo" in head.stderr
        time.sleep(0.5)
        assert not h.port_open(api_port)  # no /health until every worker is in
        worker = h.Proc(
            h.vllm_argv("serve", *common, "--node-rank", "1", "--headless"), env, tmp_path, "worker"
        )
        head.wait_log(READY)
        h.wait_http(api_port)
        worker.wait_log("Joined the head node")
        head.signal(signal.SIGKILL)
        assert worker.wait_exit(10) != 0  # the worker notices and exits for systemd to restart
        assert "Lost the head node" in worker.stderr
    finally:
        head.stop()
        if worker is not None:
            worker.stop()


def test_worker_retries_until_head_appears(tmp_path: Path) -> None:
    api_port, master_port = h.free_port(), h.free_port()
    common = ("org/m", "-pp", "2", "--nnodes", "2", "--master-port", str(master_port))
    env = h.vllm_env(VLLM_ENGINE_READY_TIMEOUT_S="20")
    worker = h.Proc(
        h.vllm_argv("serve", *common, "--node-rank", "1", "--headless"),
        env,
        tmp_path,
        "early-worker",
    )
    try:
        worker.wait_log("Waiting for the head node")
        with h.running(
            h.vllm_argv("serve", *common, "--port", str(api_port)),
            env,
            tmp_path,
            "late-head",
            ready_log=READY,
        ) as head:
            h.wait_http(api_port)
            worker.wait_log("Joined the head node")
            worker.signal(signal.SIGTERM)
            assert worker.wait_exit(10) == 0  # a clean stop
            assert head.wait_exit(10) == 1  # the engine lost a node: the head dies too
            assert "Worker node rank 1 died" in head.stderr
    finally:
        worker.stop()


# --- the wheel --------------------------------------------------------------------------------


def _venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin"


def _copy_pyyaml(bin_dir: Path) -> None:
    """Make PyYAML 'present' in a fresh venv without a network (copy this interpreter's)."""
    site = next((bin_dir.parent / "lib").glob("python3*/site-packages"))
    src = Path(yaml.__file__).resolve().parent.parent
    for entry in src.iterdir():
        if entry.name in ("yaml", "_yaml") or re.match(r"(?i)pyyaml-.*\.dist-info$", entry.name):
            shutil.copytree(entry, site / entry.name)


def test_wheel_is_valid_and_deterministic(tmp_path: Path) -> None:
    first = build.build_vllm_wheel(tmp_path / "a")
    second = build.build_vllm_wheel(tmp_path / "b")
    assert first.name == "vllm-0.33.0-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        meta = zf.read("vllm-0.33.0.dist-info/METADATA").decode()
        assert "Name: vllm\nVersion: 0.33.0\n" in meta and "Requires-Dist: pyyaml" in meta
        entry = zf.read("vllm-0.33.0.dist-info/entry_points.txt").decode()
        assert "vllm = vllm.entrypoints.cli.main:main" in entry
        assert "vllm/_data/flags.json" in names
        record = zf.read("vllm-0.33.0.dist-info/RECORD").decode().splitlines()
        assert {r.split(",")[0] for r in record} == set(names)
        for row in record:
            name, digest, size = row.split(",")
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = zf.read(name)
            assert digest == build._record_hash(data) and int(size) == len(data)


def _isolated_env() -> dict[str, str]:
    """No pip config (no extra indexes or find-links), no PYTHONPATH to the source tree."""
    env = {**h.vllm_env(), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH")
    return env


@pytest.mark.timeout(120)
def test_wheel_installs_with_pip_no_index(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build.build_vllm_wheel(wheels)
    env = _isolated_env()
    bin_dir = _venv(tmp_path / "pipvenv")
    install = [
        str(bin_dir / "pip"),
        "install",
        "-q",
        "--no-index",
        "--find-links",
        str(wheels),
        "vllm==0.33.0",
    ]
    no_yaml = subprocess.run(install, env=env, capture_output=True, text=True, timeout=60)
    assert no_yaml.returncode != 0 and "pyyaml" in no_yaml.stderr.lower()  # declared dependency
    _copy_pyyaml(bin_dir)
    subprocess.run(install, env=env, check=True, timeout=60)
    out = subprocess.run(
        [str(bin_dir / "vllm"), "--version"], env=env, capture_output=True, text=True, timeout=20
    )
    assert out.stdout.strip() == "0.33.0"
    config = tmp_path / "c.yaml"
    config.write_text("model: org/m\nbogus: 1\n")
    bad = subprocess.run(
        [str(bin_dir / "vllm"), "serve", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


UV = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(UV is None, reason="uv is not installed (pip install uv)")
@pytest.mark.timeout(120)
def test_wheel_installs_with_uv(tmp_path: Path) -> None:
    assert UV is not None
    wheels = tmp_path / "wheels"
    build.build_vllm_wheel(wheels)
    env = _isolated_env()
    uv_venv = tmp_path / "uvvenv"
    subprocess.run([UV, "venv", "-q", str(uv_venv)], env=env, check=True, timeout=60)
    env["VIRTUAL_ENV"] = str(uv_venv)
    # --no-index: with PyPI in reach, uv would pick the real vllm 0.33.0 (same version); --no-deps:
    # PyYAML is not in this offline wheel dir (the pip test proves the dependency is declared).
    subprocess.run(
        [
            UV,
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(wheels),
            "vllm==0.33.0",
        ],
        env=env,
        check=True,
        timeout=60,
    )
    out = subprocess.run(
        [str(uv_venv / "bin" / "vllm"), "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stdout.strip() == "0.33.0"


def test_startup_numbers_logged_as_vllm_does(tmp_path: Path) -> None:
    """The lines `servekit doctor` reads from the journal: KV tokens from the blocks the stand-in
    has (VLLM_STANDIN_KV_BLOCKS x block size), concurrency for max_model_len, weights loaded."""
    port = h.free_port()
    argv = h.vllm_argv("serve", "org/m", "--port", str(port), "--max-model-len", "4096")
    proc = h.Proc(argv, h.vllm_env(VLLM_STANDIN_KV_BLOCKS="1000"), tmp_path, "profile")
    try:
        proc.wait_log(READY)
        assert "[kv_cache_utils.py] GPU KV cache size: 16,000 tokens" in proc.stderr
        assert "Maximum concurrency for 4,096 tokens per request: 3.91x" in proc.stderr
        assert "[gpu_model_runner.py] Model loading took 0.0000 GiB" in proc.stderr
    finally:
        proc.stop()
