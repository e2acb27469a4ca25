"""servekit.ollama: release assets, names, the data directory check, and the shell the deploy runs
on hosts (checksum verification, the pull stream reader) executed here with real awk and sh on
real NDJSON from the stand-in Ollama."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins import harness

from servekit import catalog, ollama
from servekit.ollama import MacLayout, PathEntry
from servekit.ollama.install import _download_and_verify

STANDINS = Path(__file__).resolve().parents[1] / "standins"
AWKS = [awk for awk in ("mawk", "gawk", "original-awk", "awk") if shutil.which(awk)]
"""Every awk here: CI's Debian has mawk; macOS's BSD awk is `original-awk` on Debian."""


# --- assets, URLs, versions -------------------------------------------------------------------


def test_linux_assets_switch_to_zstd_at_the_catalogued_version() -> None:
    since = catalog.ollama_versions().zstd_since
    assert since == "0.14.0"
    assert ollama.asset_name("0.13.5", "linux") == "ollama-linux-amd64.tgz"
    assert ollama.asset_name(since, "linux") == "ollama-linux-amd64.tar.zst"
    assert ollama.asset_name("0.32.3", "linux", "arm64") == "ollama-linux-arm64.tar.zst"
    assert ollama.asset_name("0.32.3", "macos") == "ollama-darwin.tgz"
    assert ollama.release_url("https://m.example/ollama/", "v0.32.3") == (
        "https://m.example/ollama/v0.32.3"
    )


@pytest.mark.parametrize(
    ("machine", "arch"), [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64")]
)
def test_uname_machines_map_to_release_architectures(machine: str, arch: str) -> None:
    assert ollama.go_arch(f"{machine}\n") == arch


def test_other_architectures_are_refused_by_name() -> None:
    with pytest.raises(ollama.ReleaseError, match="x86_64 and arm64 only, not 'ppc64le'"):
        ollama.go_arch("ppc64le")


@pytest.mark.parametrize(
    ("output", "version"),
    [
        # no server answers (the fact points the client at a closed port)
        (["Warning: could not connect to a running Ollama instance",
          "Warning: client version is 0.32.3"], "0.32.3"),
        # a server of another version answers
        (["ollama version is 0.31.0", "Warning: client version is 0.32.3"], "0.32.3"),
        (["ollama version is 0.32.3"], "0.32.3"),
        (["sh: 1: /usr/local/bin/ollama: Exec format error"], None),
        ([], None),
    ],
)  # fmt: skip
def test_client_version_is_the_binarys_own(output: list[str], version: str | None) -> None:
    assert ollama.client_version(output) == version


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
        ("10.0.0.5:11500", "http://10.0.0.5:11500"),
        ("[::]:11434", "http://[::1]:11434"),
        ("[fd00::5]:11434", "http://[fd00::5]:11434"),
    ],
)
def test_the_host_reaches_its_server_as_ollamas_own_client_does(listen: str, url: str) -> None:
    assert ollama.api_url(listen) == url


def test_mac_layout_lives_in_the_users_home() -> None:
    layout = MacLayout("/Users/alice", "0.32.3")
    assert layout.binary == "/Users/alice/.servekit/ollama/0.32.3/ollama"
    assert layout.plist == "/Users/alice/Library/LaunchAgents/com.servekit.ollama.plist"
    assert layout.log == "/Users/alice/.ollama/logs/server.log"
    assert ollama.expand_home("~/.ollama/models", "/Users/alice") == "/Users/alice/.ollama/models"
    assert ollama.expand_home("/Volumes/m/models", "/Users/alice") == "/Volumes/m/models"


# --- model names ------------------------------------------------------------------------------


def test_model_sync_compares_normalised_names_and_pulls_in_declared_order() -> None:
    present = ["tinyllama:latest", "registry.ollama.ai/library/qwen2.5:0.5b", "phi4:14b"]
    changes = ollama.model_changes(["llama3.2:1b", "tinyllama", "qwen2.5:0.5b"], present, False)
    assert changes.pull == ["llama3.2:1b"]
    assert changes.delete == []  # without prune, extra models stay
    pruned = ollama.model_changes(["tinyllama", "qwen2.5:0.5b"], present, prune=True)
    assert pruned == ollama.ModelChanges(pull=[], delete=["phi4:14b"])
    everything = ollama.model_changes([], present, prune=True)
    assert everything.delete == sorted(present)


# --- the data directory -------------------------------------------------------------------------


def test_untraversable_parents_are_named() -> None:
    def entry(path: str, mode: int, owner: str = "root", group: str = "root") -> PathEntry:
        return {"path": path, "mode": mode, "owner": owner, "group": group}

    entries = [
        entry("/srv", 0o755),
        entry("/srv/alice", 0o700, "alice", "alice"),  # a home: others may not enter
        entry("/srv/team", 0o750, "root", "render"),  # the group may
        entry("/srv/own", 0o700, "ollama", "ollama"),
    ]
    assert ollama.parents("/srv/alice/models") == ["/srv", "/srv/alice"]
    assert ollama.untraversable(entries, "ollama", ["ollama", "render"]) == ["/srv/alice"]
    assert ollama.untraversable(entries, "ollama", ["ollama"]) == ["/srv/alice", "/srv/team"]


def test_systemd_values_are_quoted_and_specifiers_escaped() -> None:
    assert ollama.systemd_quote('a "b" 100%\\') == '"a \\"b\\" 100%%\\\\"'
    lines = ollama.environment_lines({"OLLAMA_ORIGINS": "https://*.x.com", "OLLAMA_HOST": "h:1"})
    assert lines == ['"OLLAMA_HOST=h:1"', '"OLLAMA_ORIGINS=https://*.x.com"']


# --- checksum verification (the lines the install script runs) --------------------------------


def verify(tmp_path: Path, asset: str, data: bytes, sums: str) -> subprocess.CompletedProcess[str]:
    """Run the install script's verification lines on files already in $tmp (no download)."""
    (tmp_path / asset).write_bytes(data)
    (tmp_path / "sha256sum.txt").write_text(sums)
    lines = _download_and_verify("http://mirror.invalid/v1", asset, "sha256sum")[2:]
    script = "\n".join(["set -e", f"tmp={tmp_path}", *lines, "echo verified"])
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("prefix", ["", "./", "*"])
def test_an_asset_matching_sha256sum_txt_passes(tmp_path: Path, prefix: str) -> None:
    data = b"release bytes"
    digest = hashlib.sha256(data).hexdigest()
    sums = f"{'0' * 64}  ./ollama-darwin.tgz\n{digest}  {prefix}ollama-linux-amd64.tar.zst\n"
    done = verify(tmp_path, "ollama-linux-amd64.tar.zst", data, sums)
    assert done.returncode == 0 and done.stdout.strip() == "verified", done


def test_a_tampered_asset_is_refused_with_both_digests(tmp_path: Path) -> None:
    good = hashlib.sha256(b"release bytes").hexdigest()
    bad = hashlib.sha256(b"release bytes!").hexdigest()
    sums = f"{good}  ./ollama-linux-amd64.tar.zst\n"
    done = verify(tmp_path, "ollama-linux-amd64.tar.zst", b"release bytes!", sums)
    assert done.returncode == 1 and "verified" not in done.stdout
    assert "refusing http://mirror.invalid/v1/ollama-linux-amd64.tar.zst" in done.stderr
    assert f"its sha256 is {bad}" in done.stderr and f"says {good}" in done.stderr


def test_an_asset_missing_from_sha256sum_txt_is_refused(tmp_path: Path) -> None:
    done = verify(tmp_path, "ollama-linux-arm64.tar.zst", b"x", f"{'a' * 64}  ./other.tgz\n")
    assert done.returncode == 1
    assert "ollama-linux-arm64.tar.zst is not listed in" in done.stderr


def test_install_scripts_only_touch_the_install_after_verifying() -> None:
    script = ollama.install_linux("0.32.3", "https://m.example/r", "arm64")
    lines = script.splitlines()
    verified = next(i for i, line in enumerate(lines) if '[ "$have" = "$want" ]' in line)
    touching = [i for i, line in enumerate(lines) if "/usr/local/" in line]
    assert touching and min(touching) > verified
    assert "https://m.example/r/v0.32.3/ollama-linux-arm64.tar.zst" in script
    assert 'zstd -dc "$tmp/ollama-linux-arm64.tar.zst" | tar -x' in script
    old = ollama.install_linux("0.13.5", "https://m.example/r", "amd64")
    assert 'tar -xzf "$tmp/ollama-linux-amd64.tgz"' in old and "zstd" not in old
    mac = ollama.install_macos("0.32.3", "https://m.example/r", MacLayout("/Users/a b", "0.32.3"))
    assert "shasum -a 256" in mac and "sudo" not in mac
    assert "'/Users/a b/.servekit/ollama/0.32.3'" in mac  # quoted: homes may hold spaces


# --- the pull stream, from the stand-in server -----------------------------------------------


@pytest.fixture(scope="module")
def standin_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("ollama")
    port = harness.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update({"HOME": str(tmp), "OLLAMA_HOST": f"127.0.0.1:{port}"})
    argv = [sys.executable, str(STANDINS / "ollama" / "bin" / "ollama"), "serve"]
    with harness.running(argv, env, tmp, "serve", ready_log="Listening on"):
        yield port


def pull_stream(port: int, model: str) -> str:
    status, _headers, body = harness.request(port, "POST", "/api/pull", {"model": model})
    assert status == 200  # also for an unknown model: the error comes in the stream
    return body.decode()


def read_stream(awk: str, model: str, stream: str, curl_exit: int = 0) -> tuple[int, list[str]]:
    """Feed a pull stream (and curl's exit marker) to the deploy's reader, as the host does."""
    done = subprocess.run(
        [awk, "-v", f"model={model}", "-v", "url=http://127.0.0.1:11434", ollama.PULL_AWK],
        input=stream + f"servekit-curl-exit={curl_exit}\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stdout.splitlines()


@pytest.mark.parametrize("awk", AWKS)
def test_a_pull_shows_progress_per_layer_and_ends_with_success(standin_port: int, awk: str) -> None:
    stream = pull_stream(standin_port, "llama3.2:1b")
    code, lines = read_stream(awk, "llama3.2:1b", stream)
    assert code == 0, lines
    assert lines[0] == "llama3.2:1b: pulling manifest"
    assert lines[-1] == "llama3.2:1b: success"
    digests = {json.loads(x)["digest"][7:19] for x in stream.splitlines() if '"digest"' in x}
    for digest in digests:
        assert any(line.startswith(f"llama3.2:1b: pulling {digest} 100% of ") for line in lines)
    assert len(lines) == len(set(lines))  # one line per status and 10 % step, no repeats


@pytest.mark.parametrize("awk", AWKS)
def test_an_error_line_after_http_200_fails_the_pull(standin_port: int, awk: str) -> None:
    stream = pull_stream(standin_port, "nosuch:7b")
    assert '"error"' in stream.splitlines()[-1]
    code, lines = read_stream(awk, "nosuch:7b", stream)
    assert code == 1
    assert lines[-1] == "nosuch:7b: error: pull model manifest: file does not exist"


@pytest.mark.parametrize("awk", AWKS)
def test_a_broken_stream_or_no_success_fails_the_pull(awk: str) -> None:
    partial = '{"status":"pulling manifest"}\n{"status":"pulling abc","total":100,"completed":5}\n'
    code, lines = read_stream(awk, "m:1b", partial, curl_exit=18)
    assert code == 1 and lines[-1] == (
        "m:1b: error: the pull from http://127.0.0.1:11434 broke off (curl exit 18)"
    )
    code, lines = read_stream(awk, "m:1b", partial)
    assert code == 1 and lines[-1] == "m:1b: error: the pull ended without success"
    code, lines = read_stream(awk, "m:1b", "curl: (7) Failed to connect\n", curl_exit=7)
    assert code == 1 and lines[0] == "m:1b: curl: (7) Failed to connect"


def test_pull_and_delete_commands_speak_the_api() -> None:
    pull = ollama.pull_command("hf.co/org/repo:Q4_K_M", "http://127.0.0.1:11434")
    assert "http://127.0.0.1:11434/api/pull" in pull
    assert '{"model": "hf.co/org/repo:Q4_K_M", "stream": true}' in pull
    assert "--speed-time 600" in pull  # a stalled pull ends, bounded
    delete = ollama.delete_command("phi4:14b", "http://127.0.0.1:11434")
    assert "-X DELETE" in delete and '{"model": "phi4:14b"}' in delete
