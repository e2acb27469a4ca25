"""The stand-in Ollama release and server behave like Ollama where servekit depends on them.

The release is built once per module, unpacked like `tar x -C PREFIX` would, and its
`bin/ollama` is run in subprocesses on free loopback ports.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standins import build
from standins import harness as h

STANDINS = Path(__file__).resolve().parents[1] / "standins"


ollama_src = h.load_script("servekit_standins_ollama", STANDINS / "ollama" / "bin" / "ollama")

pytestmark = pytest.mark.timeout(60)
HAVE_ZSTD = shutil.which("zstd") is not None or importlib.util.find_spec("zstandard") is not None
# From 0.14.0 on the release is a .tar.zst; without zstd here the module runs on an older .tgz one.
VERSION = "0.15.2" if HAVE_ZSTD else "0.13.5"
needs_zstd = pytest.mark.skipif(not HAVE_ZSTD, reason="needs the zstd CLI or zstandard")


def _members(archive: Path) -> tarfile.TarFile:
    data = archive.read_bytes()
    raw = build.zstd_decompress(data) if archive.name.endswith(".zst") else gzip.decompress(data)
    return tarfile.open(fileobj=io.BytesIO(raw))


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in release of VERSION."""
    rel: Path = build.build_ollama_release(tmp_path_factory.mktemp("rel"), VERSION)
    return rel


@pytest.fixture(scope="module")
def ollama_bin(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("prefix")
    archive = next(p for p in release.iterdir() if p.name.startswith("ollama-linux-"))
    with _members(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(prefix, filter="tar")
        else:
            tar.extractall(prefix)  # our own archive
    return prefix / "bin" / "ollama"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    return {
        **base,
        "HOME": str(home),
        "OLLAMA_HOST": f"127.0.0.1:{h.free_port()}",
        "OLLAMA_STANDIN_TTFT": "0",
        "OLLAMA_STANDIN_TOKENS_PER_S": "0",
    }


def _port(env: dict[str, str]) -> int:
    return int(env["OLLAMA_HOST"].rsplit(":", 1)[1])


@pytest.fixture
def server(ollama_bin: Path, env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    with h.running(
        [str(ollama_bin), "serve"], env, tmp_path, "serve", ready_log="Listening on"
    ) as proc:
        yield proc


def cli(ollama_bin: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ollama_bin), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def ndjson(port: int, path: str, body: Any) -> tuple[int, list[dict[str, Any]]]:
    status, _headers, raw = h.request(port, "POST", path, body)
    return status, [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


# --- the release ---------------------------------------------------------------------------


@needs_zstd
def test_release_assets_and_checksums(tmp_path: Path) -> None:
    rel = build.build_ollama_release(tmp_path / "a", VERSION)
    assert rel == tmp_path / "a" / f"v{VERSION}"
    assert sorted(p.name for p in rel.iterdir()) == ["ollama-linux-amd64.tar.zst", "sha256sum.txt"]
    (line,) = (rel / "sha256sum.txt").read_text().splitlines()
    digest, name = line.split("  ")
    assert name == "ollama-linux-amd64.tar.zst"
    assert digest == hashlib.sha256((rel / name).read_bytes()).hexdigest()
    again = build.build_ollama_release(tmp_path / "b", VERSION)
    assert (again / name).read_bytes() == (rel / name).read_bytes()  # reproducible

    with _members(rel / name) as tar:
        files = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        assert files["bin/ollama"].isfile() and stat.S_IMODE(files["bin/ollama"].mode) == 0o755
        assert files["lib/ollama"].isdir()
        assert any(n.startswith("lib/ollama/lib") and n.endswith(".so") for n in files)
        assert set(n.split("/")[0] for n in files if n not in (".", "")) == {"bin", "lib"}
        script = tar.extractfile(files["bin/ollama"]).read().decode()  # type: ignore[union-attr]
        assert script.startswith("#!/usr/bin/env python3\n")
        assert f'VERSION = "{VERSION}"' in script

    old = build.build_ollama_release(tmp_path / "a", "0.13.5", arch="arm64")
    assert [p.name for p in old.iterdir() if p.suffix == ".tgz"] == ["ollama-linux-arm64.tgz"]
    with _members(old / "ollama-linux-arm64.tgz") as tar:
        assert "./bin/ollama" in tar.getnames()


# --- configuration -------------------------------------------------------------------------


def test_ollama_host_and_durations_parse_like_ollama() -> None:
    parse = ollama_src.parse_host
    assert parse(None) == ("http", "127.0.0.1", 11434)
    assert parse("0.0.0.0") == ("http", "0.0.0.0", 11434)
    assert parse("10.0.0.5") == ("http", "10.0.0.5", 11434)
    assert parse("http://example.com") == ("http", "example.com", 80)
    assert parse("https://example.com") == ("https", "example.com", 443)
    assert parse("example.com:8080") == ("http", "example.com", 8080)
    assert parse(":9000") == ("http", "", 9000)
    assert parse("[::1]:9999") == ("http", "::1", 9999)
    assert parse("http://10.1.2.3:5000/path") == ("http", "10.1.2.3", 5000)

    dur, fmt = ollama_src.parse_duration, ollama_src.go_duration
    default = 5 * 60 * 10**9
    assert fmt(dur("", default)) == "5m0s"
    assert fmt(dur("300", default)) == "5m0s"
    assert fmt(dur("1h30m", default)) == "1h30m0s"
    assert fmt(dur("90s", default)) == "1m30s"
    assert fmt(dur("-1", default)) == "2562047h47m16.854775807s"  # negative: forever
    assert fmt(dur("0", default)) == "0s"
    assert fmt(dur("500ms", default)) == "500ms"

    name = ollama_src.Name("llama3.2")
    assert (name.full, name.short) == (
        "registry.ollama.ai/library/llama3.2:latest",
        "llama3.2:latest",
    )
    assert ollama_src.Name("registry.ollama.ai/library/qwen2.5:7b").short == "qwen2.5:7b"
    assert ollama_src.Name("team/custom:v1").short == "team/custom:v1"
    assert not ollama_src.Name("bad name!").valid


def test_version_command(ollama_bin: Path, env: dict[str, str], tmp_path: Path) -> None:
    offline = cli(ollama_bin, env, "--version")
    assert offline.returncode == 0
    assert "Warning: could not connect to a running Ollama instance" in offline.stdout
    with h.running(
        [str(ollama_bin), "serve"], env, tmp_path, "v", ready_log="Listening on"
    ) as server:
        for flag in ("--version", "-v"):
            assert cli(ollama_bin, env, flag).stdout == f"ollama version is {VERSION}\n"
        server.signal(signal.SIGTERM)
        assert server.wait_exit(10) == 0


def test_serve_fails_like_ollama(ollama_bin: Path, env: dict[str, str], tmp_path: Path) -> None:
    no_home = {k: v for k, v in env.items() if k != "HOME"}
    proc = subprocess.run(
        [str(ollama_bin), "serve"], env=no_home, capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 1 and "Error: $HOME is not defined" in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run(
        [str(ollama_bin), "serve"],
        capture_output=True,
        text=True,
        env={**env, "OLLAMA_MODELS": str(blocker / "models")},
        timeout=20,
    )
    assert proc.returncode == 1 and f"Error: mkdir {blocker}/models" in proc.stderr


def test_serve_logs_config_and_answers_liveness(server: Any, env: dict[str, str]) -> None:
    port = _port(env)
    log = server.stderr
    assert 'msg="server config" env="map[' in log
    assert f"OLLAMA_HOST:http://127.0.0.1:{port}" in log
    assert f"OLLAMA_MODELS:{env['HOME']}/.ollama/models" in log
    assert "OLLAMA_KEEP_ALIVE:5m0s" in log
    assert f"Listening on 127.0.0.1:{port} (version {VERSION})" in log
    status, _, body = h.request(port, "GET", "/")
    assert (status, body) == (200, b"Ollama is running")
    assert h.request(port, "HEAD", "/")[0] == 200
    status, _, body = h.request(port, "GET", "/api/version")
    assert json.loads(body) == {"version": VERSION}
    assert h.request(port, "GET", "/api/tags")[2] == b'{"models":[]}'
    # A loopback-bound Ollama refuses foreign Host headers (DNS-rebinding protection).
    assert h.request(port, "GET", "/", headers={"Host": "evil.example"})[0] == 403
    assert h.request(port, "GET", "/", headers={"Host": "localhost:11434"})[0] == 200


# --- models ---------------------------------------------------------------------------------


def test_pull_writes_real_layout_persists_and_deletes(
    ollama_bin: Path, env: dict[str, str], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    env = {**env, "OLLAMA_MODELS": str(models), "OLLAMA_KEEP_ALIVE": "10m"}
    port = _port(env)
    with h.running([str(ollama_bin), "serve"], env, tmp_path, "s1", ready_log="Listening on"):
        status, events = ndjson(port, "/api/pull", {"model": "llama3.2"})
        assert status == 200
        statuses = [e["status"] for e in events]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        progress = [e for e in events if e["status"].startswith("pulling ") and "digest" in e]
        assert progress and all(e["status"] == f"pulling {e['digest'][7:19]}" for e in progress)
        assert all(
            e["completed"] == e["total"] for e in progress if "completed" in e and e is progress[-1]
        )

        manifest_path = models / "manifests/registry.ollama.ai/library/llama3.2/latest"
        manifest = json.loads(manifest_path.read_text())
        assert manifest["schemaVersion"] == 2
        assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        layer_types = {la["mediaType"] for la in manifest["layers"]}
        assert "application/vnd.ollama.image.model" in layer_types
        for desc in [manifest["config"], *manifest["layers"]]:
            blob = models / "blobs" / desc["digest"].replace(":", "-")
            assert blob.stat().st_size == desc["size"]
            assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == desc["digest"]

        stream_false = h.request(
            port, "POST", "/api/pull", {"model": "llama3.2:3b", "stream": False}
        )
        assert stream_false[0] == 200 and json.loads(stream_false[2]) == {"status": "success"}
        assert cli(ollama_bin, env, "pull", "qwen2.5:0.5b").returncode == 0

    with h.running(
        [str(ollama_bin), "serve"], env, tmp_path, "s2", ready_log="Listening on"
    ) as again:
        assert "total unused blobs removed: 0" in again.stderr
        tags = json.loads(h.request(port, "GET", "/api/tags")[2])["models"]
        by_name = {m["name"]: m for m in tags}
        assert set(by_name) == {"llama3.2:latest", "llama3.2:3b", "qwen2.5:0.5b"}
        entry = by_name["llama3.2:latest"]
        assert entry["model"] == "llama3.2:latest"
        assert entry["digest"] == hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        assert entry["details"]["quantization_level"] == "Q4_K_M"
        assert entry["details"]["format"] == "gguf" and entry["size"] > 0
        assert entry["modified_at"]
        listing = cli(ollama_bin, env, "list").stdout.splitlines()
        assert listing[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
        assert any(line.startswith("llama3.2:3b ") for line in listing)
        models_v1 = json.loads(h.request(port, "GET", "/v1/models")[2])["data"]
        assert {m["id"] for m in models_v1} == set(by_name)
        shown = json.loads(h.request(port, "POST", "/api/show", {"model": "qwen2.5:0.5b"})[2])
        assert shown["details"]["family"] == "qwen2" and "capabilities" in shown

        # latest and 3b are one model: deleting one keeps the blobs the other needs.
        blobs_before = set((models / "blobs").iterdir())
        assert h.request(port, "DELETE", "/api/delete", {"model": "llama3.2"})[0] == 200
        assert not manifest_path.exists()
        assert h.request(port, "DELETE", "/api/delete", {"model": "llama3.2"})[0] == 404
        assert h.request(port, "POST", "/api/show", {"model": "llama3.2"})[0] == 404
        rm = cli(ollama_bin, env, "rm", "llama3.2:3b")
        assert rm.returncode == 0 and rm.stdout == "deleted 'llama3.2:3b'\n"
        assert cli(ollama_bin, env, "rm", "llama3.2:3b").returncode == 1
        remaining = set((models / "blobs").iterdir())
        assert remaining < blobs_before and remaining  # qwen2.5's blobs stay
        assert "llama3.2" not in h.request(port, "GET", "/api/tags")[2].decode()


def test_pull_unknown_name_errors_after_200(
    server: Any, ollama_bin: Path, env: dict[str, str]
) -> None:
    port = _port(env)
    status, events = ndjson(port, "/api/pull", {"model": "no-such-model:1b"})
    assert status == 200
    assert events == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    status, _, body = h.request(
        port, "POST", "/api/pull", {"model": "no-such-model", "stream": False}
    )
    assert status == 500
    assert json.loads(body) == {"error": "pull model manifest: file does not exist"}
    assert h.request(port, "POST", "/api/pull", {"model": "bad name!"})[0] == 400
    pulled = cli(ollama_bin, env, "pull", "no-such-model")
    assert pulled.returncode == 1
    assert "Error: pull model manifest: file does not exist" in pulled.stderr


def test_extra_library_names(ollama_bin: Path, env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "OLLAMA_STANDIN_LIBRARY": "acme/coder:13b, private-llm"}
    port = _port(env)
    with h.running([str(ollama_bin), "serve"], env, tmp_path, "lib", ready_log="Listening on"):
        for name in ("acme/coder:13b", "private-llm", "registry.ollama.ai/library/private-llm"):
            status, events = ndjson(port, "/api/pull", {"model": name})
            assert status == 200 and events[-1] == {"status": "success"}, (name, events)
        names = {m["name"] for m in json.loads(h.request(port, "GET", "/api/tags")[2])["models"]}
        assert names == {"acme/coder:13b", "private-llm:latest"}


def test_openai_chat_streams_and_ignores_ignore_eos(
    ollama_bin: Path, env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "OLLAMA_STANDIN_EOS_AFTER": "3"}
    port = _port(env)
    with h.running([str(ollama_bin), "serve"], env, tmp_path, "chat", ready_log="Listening on"):
        chat = {
            "model": "gemma3:4b",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        status, _, body = h.request(port, "POST", "/v1/chat/completions", chat)
        assert status == 404 and "not found" in json.loads(body)["error"]["message"]
        assert ndjson(port, "/api/pull", {"model": "gemma3:4b"})[1][-1] == {"status": "success"}

        events = h.sse_events(port, "/v1/chat/completions", {**chat, "ignore_eos": True})
        assert events[-1][1] == "[DONE]"
        chunks = [json.loads(d) for _, d in events[:-1]]
        texts = [
            c["choices"][0]["delta"]["content"]
            for c in chunks
            if c["choices"] and c["choices"][0]["delta"]["content"]
        ]
        assert len(texts) == 3  # Ollama's OpenAI endpoint has no ignore_eos
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)

        status, _, body = h.request(
            port, "POST", "/v1/chat/completions", {**chat, "stream": False, "max_tokens": 2}
        )
        result = json.loads(body)
        assert status == 200 and result["choices"][0]["finish_reason"] == "length"
        assert result["usage"]["completion_tokens"] == 2

        gen = ndjson(port, "/api/generate", {"model": "gemma3:4b", "keep_alive": -1})[1]
        assert gen[0]["done"] and gen[0]["done_reason"] == "load"
        running = json.loads(h.request(port, "GET", "/api/ps")[2])["models"]
        assert [m["name"] for m in running] == ["gemma3:4b"]
