"""Nothing written outside where it belongs: `servekit render` and symlinks in OUTDIR, S3 keys that
escape the checkpoint directory, data directories that are system directories, and the apt
sources a hostile mirror URL could extend."""

from __future__ import annotations

import base64
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import jinja2
import pytest

from servekit import catalog, credentials, nvidia, ollama, pyenv
from servekit.host_scripts import fetch_weights
from servekit.operations.credentials import write_command
from servekit.render import RenderedFile, UnsafeOutput, gpu_files, render_template, write_tree
from servekit.spec import SecretRef, Sources

# --- servekit render --------------------------------------------------------------------------


def rendered(path: str, content: str = "x = 1\n", mode: str = "0644") -> RenderedFile:
    return RenderedFile(path, content, mode)


def test_render_writes_the_tree_with_the_files_modes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = write_tree(
        [rendered("/etc/vllm/a.yaml"), rendered("/etc/vllm/a.env", "KEY=<secret>\n", "0600")],
        out,
    )
    assert written == [out / "etc/vllm/a.yaml", out / "etc/vllm/a.env"]
    assert (out / "etc/vllm/a.env").read_text() == "KEY=<secret>\n"
    assert (out / "etc/vllm/a.env").stat().st_mode & 0o777 == 0o600
    # a second render replaces the files in place
    write_tree([rendered("/etc/vllm/a.yaml", "x = 2\n")], out)
    assert (out / "etc/vllm/a.yaml").read_text() == "x = 2\n"
    assert not list((out / "etc/vllm").glob(".*servekit-new"))


def test_render_refuses_a_symlinked_folder_planted_in_outdir(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "host").mkdir(parents=True)
    (out / "host" / "etc").symlink_to(outside)
    with pytest.raises(UnsafeOutput, match=r"refusing to write through the symlink .*host/etc"):
        write_tree([rendered("/etc/systemd/system/vllm.service")], out / "host")
    assert list(outside.iterdir()) == []


def test_render_refuses_a_symlinked_file_planted_in_outdir(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    (out / "etc").mkdir(parents=True)
    (out / "etc" / "servekit.conf").symlink_to(victim)
    with pytest.raises(UnsafeOutput, match="symlink"):
        write_tree([rendered("/etc/servekit.conf", "overwritten\n")], out)
    assert victim.read_text() == "keep me\n"
    assert (out / "etc" / "servekit.conf").is_symlink()


def test_render_refuses_paths_that_climb_out(tmp_path: Path) -> None:
    with pytest.raises(UnsafeOutput, match="not a normalised absolute path"):
        write_tree([rendered("/etc/../../escaped")], tmp_path / "out")
    assert not (tmp_path / "escaped").exists()


def test_the_render_command_says_why_and_exits(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from servekit.cli import app

    inventory = Path(__file__).resolve().parents[2] / "inventories" / "laptop.py"
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    first = CliRunner().invoke(app, ["render", str(inventory), str(out)])
    assert first.exit_code == 0, first.output
    host = next(p for p in out.iterdir() if p.is_dir())
    top = next(p for p in host.iterdir() if p.is_dir())
    os.rename(top, tmp_path / "moved")
    top.symlink_to(outside)
    result = CliRunner().invoke(app, ["render", str(inventory), str(out)])
    assert result.exit_code == 1
    assert "refusing to write through the symlink" in result.output
    assert "Traceback" not in result.output
    assert list(outside.iterdir()) == []


# --- S3 keys ----------------------------------------------------------------------------------


def test_s3_keys_inside_the_checkpoint_land_inside(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "org--model"
    dest.mkdir(parents=True)
    copies = fetch_weights.plan_copies(
        str(dest), "ckpt/m/", [("ckpt/m/config.json", 10), ("ckpt/m/sub/a.safetensors", 20)]
    )
    real = os.path.realpath(dest)
    assert copies == [
        ("ckpt/m/config.json", 10, f"{real}/config.json"),
        ("ckpt/m/sub/a.safetensors", 20, f"{real}/sub/a.safetensors"),
    ]


@pytest.mark.parametrize(
    "key",
    [
        "ckpt/m/../../etc/passwd",
        "ckpt/m/..",
        "ckpt/m/sub/../../x",
        "ckpt/m//etc/passwd",
        "ckpt/m/./config.json",
        "ckpt/m/a\nb",
        "other/config.json",
        "/etc/passwd",
    ],
)
def test_s3_keys_that_escape_the_checkpoint_are_refused(key: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    listing = [("ckpt/m/config.json", 1), (key, 1)]
    with pytest.raises(fetch_weights.UnsafeKey, match=r"refusing S3 key|not under the prefix"):
        fetch_weights.plan_copies(str(dest), "ckpt/m/", listing)


def test_s3_keys_through_a_planted_symlink_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(fetch_weights.UnsafeKey, match="is a symlink"):
        fetch_weights.safe_target(str(dest), "p/", "p/sub/model.safetensors")


def test_a_checkpoint_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dest").symlink_to(outside)
    with pytest.raises(fetch_weights.UnsafeKey, match="it is a symlink"):
        fetch_weights.safe_target(str(tmp_path / "dest"), "p/", "p/config.json")


def test_the_fetch_script_refuses_an_escaping_listing_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole listing is checked first: one bad key and nothing is downloaded."""
    downloads: list[str] = []

    class Client:
        def get_paginator(self, _name: str) -> Client:
            return self

        def paginate(self, **_kw: str) -> list[dict[str, list[dict[str, object]]]]:
            keys = ["p/config.json", "p/../../../../tmp/evil"]
            return [{"Contents": [{"Key": k, "Size": 1} for k in keys]}]

        def download_file(self, _bucket: str, key: str, _target: str) -> None:
            downloads.append(key)

    import boto3

    monkeypatch.setattr(boto3, "client", lambda *_a, **_k: Client())
    dest = tmp_path / "dest"
    monkeypatch.setattr(
        fetch_weights,
        "job",
        {"s3": {"bucket": "b", "prefix": "p/", "dest": str(dest)}, "checkpoint": "m"},
    )
    with pytest.raises(SystemExit, match=re.escape("refusing S3 key 'p/../../../../tmp/evil'")):
        fetch_weights.s3()
    assert downloads == []


# --- data directories -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/etc", "/usr", "/var", "/home", "/var/lib", "/usr/local", "/etc/ollama", "/proc/1"],
)
def test_system_directories_are_never_a_data_directory(path: str) -> None:
    assert ollama.data_dir_problem(path) is not None


@pytest.mark.parametrize("path", ["relative", "/srv//x", "/srv/./x", "/srv/../etc", "/srv/x/"])
def test_data_directories_are_absolute_and_normalised(path: str) -> None:
    assert ollama.data_dir_problem(path) is not None


@pytest.mark.parametrize(
    "path",
    ["/var/lib/ollama", "/srv/ollama/models", "/home/alice/models", ollama.INSTALL_SH_MODELS],
)
def test_ordinary_data_directories_are_accepted(path: str) -> None:
    assert ollama.data_dir_problem(path) is None


# --- apt sources and the cuda-keyring pin -----------------------------------------------------


@pytest.mark.parametrize(
    "mirror",
    [
        "https://m.example/repos\nTrusted: yes",
        "https://m.example/repos\rTrusted: yes",
        "https://m.example/repos https://evil.example/",
        "https://user:pass@m.example/repos",
        "ftp://m.example/repos",
        "https://m.example/\x1b[2J",
    ],
)
def test_a_mirror_that_could_extend_the_apt_sources_is_refused(mirror: str) -> None:
    assert nvidia.mirror_problem(mirror) is not None
    with pytest.raises(nvidia.PolicyError):
        nvidia.repository_url(mirror, "ubuntu2404", "x86_64")


def test_the_sources_file_of_an_accepted_mirror_has_exactly_its_fields() -> None:
    url = nvidia.repository_url("https://m.example/cuda/repos/", "ubuntu2404", "x86_64")
    (sources,) = [
        f for f in gpu_files(url, nvidia.KEYRING_FILE, None) if f.path.endswith(".sources")
    ]
    fields = [line.split(":", 1)[0] for line in sources.content.splitlines() if line[:1].isalpha()]
    assert fields == ["Types", "URIs", "Suites", "Signed-By"]
    assert "URIs: https://m.example/cuda/repos/ubuntu2404/x86_64/\n" in sources.content


def test_the_keyring_pins_are_sha256s_of_the_catalogued_version() -> None:
    assert nvidia.KEYRING_VERSION == catalog.cuda_keyring_version() == "1.1-1"
    for directory in ("ubuntu2204", "ubuntu2404", "debian12"):
        pin = nvidia.keyring_sha256(directory, "x86_64")
        assert nvidia.SHA256.match(pin)
    assert nvidia.keyring_deb_url("https://m/ubuntu2404/x86_64/") == (
        "https://m/ubuntu2404/x86_64/cuda-keyring_1.1-1_all.deb"
    )


def test_a_pair_without_a_pin_is_refused_unless_the_host_overrides_it() -> None:
    with pytest.raises(nvidia.PolicyError, match=r"no pinned sha256 .* debian12/sbsa"):
        nvidia.keyring_sha256("debian12", "sbsa")
    assert nvidia.keyring_sha256("debian12", "sbsa", "a" * 64) == "a" * 64
    with pytest.raises(nvidia.PolicyError, match="is not a sha256"):
        nvidia.keyring_sha256("debian12", "x86_64", "not-a-digest; reboot")


# --- mirror credentials -----------------------------------------------------------------------

NETRC = (
    "# the team's mirrors\n"
    "machine mirror.example login alice password s3cr3t-P4ss\n"
    "machine apt.example\n  login bob\n  password hunter2\n"
)


def secret(tmp_path: Path, text: str = NETRC, mode: int = 0o600) -> Path:
    path = tmp_path / "netrc"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_mirror_credentials_are_parsed_and_written_back_in_one_form(tmp_path: Path) -> None:
    logins = credentials.read({"file": str(secret(tmp_path))})
    assert [(e.machine, e.login) for e in logins] == [
        ("mirror.example", "alice"),
        ("apt.example", "bob"),
    ]
    assert "s3cr3t" not in repr(logins)
    assert credentials.netrc_text(logins).splitlines()[1:] == [
        "machine mirror.example login alice password s3cr3t-P4ss",
        "machine apt.example login bob password hunter2",
    ]


def test_apt_gets_an_http_entry_for_an_http_mirror() -> None:
    """apt_auth.conf(5): a machine without a protocol matches https (and tor+https) only."""
    logins = credentials.parse_netrc(NETRC, "test")
    sources = {"nvidia_apt": "http://apt.example/cuda/repos", "python_index": "https://x/simple"}
    lines = credentials.apt_auth_text(logins, sources).splitlines()[1:]
    assert lines == [
        "machine mirror.example login alice password s3cr3t-P4ss",
        "machine apt.example login bob password hunter2",
        "machine http://apt.example login bob password hunter2",
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("default login a password b", "no default or macdef"),
        ("machine m login a password b\nmacdef init\n", "no default or macdef"),
        ("machine m login a", "has no password"),
        ("machine m password p", "has no login"),
        ('machine m login a password "two words"', "quote"),
        ("machine m login a password pä", "non-ASCII"),
        ("login a password b", "before any machine"),
        ("machine m login a password", "has no value"),
        ("machine user@m login a password b", "not a host name"),
        ("# only a comment\n", "hold no entry"),
        ("machine m login a password b trailing", "expected machine"),
        ("", "hold no entry"),
    ],
)
def test_netrc_that_cannot_be_passed_on_safely_is_refused(text: str, why: str) -> None:
    with pytest.raises(credentials.CredentialsError, match=why) as refused:
        credentials.parse_netrc(text, "file ~/netrc")
    assert "hunter" not in str(refused.value) and "file ~/netrc" in str(refused.value)


def test_a_credentials_file_must_be_private_regular_and_small(tmp_path: Path) -> None:
    with pytest.raises(credentials.CredentialsError, match="read by others: chmod 600"):
        credentials.read({"file": str(secret(tmp_path, mode=0o644))})
    with pytest.raises(credentials.CredentialsError, match="not a regular file"):
        credentials.read({"file": "/dev/zero"})
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(credentials.CredentialsError, match="not a regular file"):
        credentials.read({"file": str(fifo)})
    big = secret(tmp_path, "machine m login a password b\n" + "#" * 70_000)
    with pytest.raises(credentials.CredentialsError, match="larger than 64 KiB"):
        credentials.read({"file": str(big)})
    with pytest.raises(credentials.CredentialsError, match="cannot read"):
        credentials.read({"file": str(tmp_path / "missing")})


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRROR_NETRC", "machine m login a password b")
    assert credentials.read({"env": "MIRROR_NETRC"})[0].login == "a"
    monkeypatch.setenv("MIRROR_NETRC", " ")
    with pytest.raises(credentials.CredentialsError, match="is empty"):
        credentials.read({"env": "MIRROR_NETRC"})


def test_the_write_command_takes_the_secret_on_stdin_and_never_opens_it_up(
    tmp_path: Path,
) -> None:
    target = tmp_path / "etc dir" / "servekit" / "netrc$(touch PWNED)"
    command = write_command(str(target), None)
    assert "s3cr3t" not in command
    result = subprocess.run(
        ["sh", "-c", f"umask 022; {command}"],
        input=NETRC,
        text=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert target.read_text() == NETRC
    assert target.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "PWNED").exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp file left


def test_index_urls_with_a_login_never_reach_a_command_line() -> None:
    with pytest.raises(ValueError, match="mirror_credentials"):
        pyenv.install_packages("/v", ["x==1"], "https://u:p@pypi.example/simple")
    with pytest.raises(ValueError, match="mirror_credentials"):
        pyenv.bootstrap_uv("https://u:p@pypi.example/simple")
    command = pyenv.install_packages("/v", ["x==1"], "https://pypi.example/simple", netrc="/n rc")
    assert command.startswith("NETRC='/n rc' ") and command.count("NETRC") == 1


def test_the_fleet_declares_mirror_credentials_as_a_secret_reference() -> None:
    sources = Sources(mirror_credentials=SecretRef(file=Path("~/.config/servekit/netrc")))
    dumped = sources.model_dump(mode="json")["mirror_credentials"]
    assert dumped == {"file": "~/.config/servekit/netrc", "env": None}
    assert credentials.reference({"mirror_credentials": dumped}) == dumped
    assert credentials.reference(Sources().model_dump(mode="json")) is None


class _LoginMirror(http.server.BaseHTTPRequestHandler):
    """A PEP 503 index and a file tree that answer only with the right Basic login."""

    wheel: Path
    expected = "Basic " + base64.b64encode(b"alice:s3cr3t-P4ss").decode()

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mirror"')
            self.end_headers()
            return
        if self.path.rstrip("/") == "/simple/sk-demo":
            body = f'<a href="/files/{self.wheel.name}">{self.wheel.name}</a>'.encode()
            kind = "text/html"
        elif self.path == f"/files/{self.wheel.name}":
            body, kind = self.wheel.read_bytes(), "application/octet-stream"
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_real_pip_and_curl_log_in_with_the_netrc_servekit_writes(tmp_path: Path) -> None:
    """The files servekit writes work with the real readers: pip through NETRC (as the uv/pip
    commands run), curl through --netrc-file (as the Ollama download runs); no login on argv."""
    from hostbench import build_wheel

    _LoginMirror.wheel = build_wheel(tmp_path / "wheels", "sk-demo", "1.0.0")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LoginMirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        logins = credentials.parse_netrc(
            "machine 127.0.0.1 login alice password s3cr3t-P4ss", "test"
        )
        netrc = tmp_path / "netrc"
        netrc.write_text(credentials.netrc_text(logins))
        index = f"{base}/simple/"
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q"]
        pip += [*pyenv.pip_index_args(index), "-d", str(tmp_path / "got"), "sk-demo==1.0.0"]
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
        refused = subprocess.run(pip, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0  # the mirror wants a login
        got = subprocess.run(
            pip, env={**env, "NETRC": str(netrc)}, capture_output=True, text=True, timeout=120
        )
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "got" / _LoginMirror.wheel.name).exists()
        curl = [
            "curl",
            "-fsS",
            "--netrc-file",
            str(netrc),
            f"{base}/files/{_LoginMirror.wheel.name}",
        ]
        fetched = subprocess.run(curl, capture_output=True, timeout=60)
        assert fetched.returncode == 0 and fetched.stdout == _LoginMirror.wheel.read_bytes()
        assert not any("s3cr3t" in word for word in pip + curl)
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "url", ["https://m/x/\nTrusted: yes", "https://m/x/\rTrusted: yes", "https://m/ https://e/", ""]
)
def test_the_sources_template_itself_refuses_a_value_that_adds_a_field(url: str) -> None:
    """Defence in depth: even a URL that bypassed nvidia.repository_url never renders."""
    with pytest.raises(jinja2.UndefinedError, match="refused_apt_sources_value"):
        render_template("nvidia-cuda.sources.j2", url=url, keyring=nvidia.KEYRING_FILE)
    with pytest.raises(jinja2.UndefinedError):
        render_template("nvidia-cuda.sources.j2", url="https://m/", keyring="/k.gpg\nTrusted: yes")
    shown = render_template("nvidia-cuda.sources.j2", url="<NVIDIA repository>", keyring="/k")
    assert "URIs: <NVIDIA repository>\n" in shown


# --- Xet high-performance downloads from the host's memory -------------------------------------

GIB = 2**30


def meminfo(total_bytes: int) -> str:
    return f"MemTotal:       {total_bytes // 1024} kB\nMemFree:        1024 kB\n"


@pytest.mark.parametrize(
    ("total", "cgroup_max", "high_performance"),
    [
        (12 * GIB, None, False),  # the reported OOM: a 12 GB host
        (int(13.61 * 10**9), "max", False),  # Colab, OOM-killed (unsloth-zoo pull 989)
        (64 * 10**9, None, True),  # Hugging Face: "at least 64 GB of RAM"
        (1152 * GIB, None, True),  # p4d.24xlarge
        (1152 * GIB, str(16 * GIB), False),  # a container limited to 16 GiB on a big host
    ],
)
def test_xet_high_performance_only_with_64_gb_usable(
    total: int, cgroup_max: str | None, high_performance: bool
) -> None:
    memory = fetch_weights.usable_memory(meminfo(total), cgroup_max)
    expected = {"HF_XET_HIGH_PERFORMANCE": "1"} if high_performance else {}
    assert fetch_weights.xet_environment(memory) == expected


@pytest.mark.parametrize(("total", "mode"), [(12 * GIB, None), (256 * GIB, "1")])
def test_the_download_runs_with_the_mode_its_host_memory_allows(
    total: int, mode: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fetch_weights.huggingface() on a host with `total` bytes: the variable hf_xet reads when
    snapshot_download runs (it was always 1 before)."""
    seen: dict[str, str | None] = {}

    def snapshot_download(**_: object) -> str:
        seen["mode"] = os.environ.get("HF_XET_HIGH_PERFORMANCE")
        return str(tmp_path / "snapshots" / "abc123")

    hub = type(sys)("huggingface_hub")
    hub.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    for name in ("HF_XET_HIGH_PERFORMANCE", "HF_ENDPOINT", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.setenv(name, "")  # recorded, so the function's settings are undone after
        monkeypatch.delenv(name)
    texts = {"/proc/meminfo": meminfo(total), "/proc/self/cgroup": "0::/\n"}
    monkeypatch.setattr(fetch_weights, "read_text", lambda path: texts.get(path))
    monkeypatch.setattr(
        fetch_weights,
        "job",
        {"checkpoint": "org/m", "hf": {"endpoint": "https://hf.example", "cache_dir": "/c"}},
    )
    assert fetch_weights.huggingface()["commit"] == "abc123"
    assert seen["mode"] == mode
