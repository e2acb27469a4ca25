"""Every command builder quotes every value: hostile values (newline, `$()`, backticks, quotes, `;`)
are passed into each builder and the generated shell is *run* here with `sh`, in a scratch folder,
with stub programs first on PATH that record their argv. The argv must be exactly what was meant,
the messages must show the values literally, and no injected command may run (each one would
`touch` a file in the scratch folder, with the real `touch` on PATH)."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from servekit import nvidia, ollama, pyenv, shell

PWNED = "PWNED"
INJECTIONS = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "'; touch PWNED; '",
    '"; touch PWNED; "',
    "\ntouch PWNED\n",
    "; touch PWNED",
    " && touch PWNED",
    "| touch PWNED",
    "$HOME${IFS}\\",
]
"""Injected into values; every one would create ./PWNED if the shell ran it."""

RECORDER = """#!/bin/sh
# records its argv (one NUL-terminated argument each, then a \\001 record), then answers
log="$STUB_LOG/$(basename "$0").argv"
{ for a in "$@"; do printf '%s\\0' "$a"; done; printf '\\001\\0'; } >> "$log"
"""


def stubs(tmp: Path, programs: dict[str, str]) -> Path:
    """A folder of stub programs: each records its argv, then runs `body`."""
    folder = tmp / "stubs"
    folder.mkdir(exist_ok=True)
    for name, body in programs.items():
        path = folder / name
        path.write_text(RECORDER + body + "\n")
        path.chmod(0o755)
    return folder


def run_sh(script: str, tmp: Path, programs: dict[str, str]) -> subprocess.CompletedProcess[str]:
    folder = stubs(tmp, programs)
    env = {
        "PATH": f"{folder}:/usr/bin:/bin",
        "STUB_LOG": str(tmp),
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
    }
    return subprocess.run(
        ["sh", "-c", script], cwd=tmp, env=env, capture_output=True, text=True, timeout=30
    )


def calls(tmp: Path, program: str) -> list[list[str]]:
    """The argv (without the program) of each call of a stub, in order."""
    log = tmp / f"{program}.argv"
    if not log.exists():
        return []
    found: list[list[str]] = [[]]
    for word in log.read_text().split("\0")[:-1]:
        if word == "\x01":
            found.append([])
        else:
            found[-1].append(word)
    return found[:-1]


def assert_not_injected(tmp: Path) -> None:
    assert not (tmp / PWNED).exists(), "an injected command ran"


def parses(script: str) -> None:
    """`bash -n`: the generated text is one well-formed script."""
    result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- the quoting layer itself -----------------------------------------------------------------


@pytest.mark.parametrize("value", INJECTIONS)
def test_a_word_and_a_message_print_the_value_literally(value: str, tmp_path: Path) -> None:
    script = "\n".join(
        [
            "x=inside",
            f"printf '[%s]\\n' {shell.word('a', value, shell.var('x'), value)}",
            shell.say("said ", value),
            shell.die("stopped ", value, " with ", shell.var("x")),
            "touch NOT_REACHED",
        ]
    )
    parses(script)
    result = run_sh(script, tmp_path, {})
    assert result.returncode == 1
    assert result.stdout == f"[a{value}inside{value}]\n"
    assert result.stderr == f"servekit: said {value}\nservekit: stopped {value} with inside\n"
    assert_not_injected(tmp_path)
    assert not (tmp_path / "NOT_REACHED").exists()


@pytest.mark.parametrize("value", INJECTIONS)
def test_join_and_assignment_round_trip(value: str) -> None:
    argv = ["curl", value, f"--opt={value}", ""]
    assert shlex.split(shell.join(argv)) == argv
    assert shlex.split(shell.assignment("NETRC", value)) == [f"NETRC={value}"]


def test_names_that_are_not_shell_names_are_refused() -> None:
    for bad in ("a b", "x;y", "$(id)", "1x", ""):
        with pytest.raises(ValueError):
            shell.var(bad)
        with pytest.raises(ValueError):
            shell.assignment(bad, "v")
    with pytest.raises(ValueError, match="control character"):
        shell.refuse_control("a\nb", "sources.nvidia_apt")
    assert shell.refuse_control("https://m.example/x", "sources.nvidia_apt") == (
        "https://m.example/x"
    )


# --- Ollama's install script ------------------------------------------------------------------

CURL_FAILS = "exit 22"


@pytest.mark.parametrize("value", INJECTIONS)
def test_a_hostile_version_cannot_run_a_command_when_the_download_fails(
    value: str, tmp_path: Path
) -> None:
    """The reported bug: `0.99.0$(cmd)` reached the download-failure message inside "..."."""
    version = "0.99.0" + value
    script = ollama.install_linux(version, "https://m.example/r", "amd64")
    parses(script)
    result = run_sh(script, tmp_path, {"curl": CURL_FAILS, "mktemp": f"echo {tmp_path}/dl"})
    assert result.returncode == 1
    sums = f"https://m.example/r/v{version}/sha256sum.txt"
    assert result.stderr == f"servekit: cannot download {sums}\n"
    (argv,) = calls(tmp_path, "curl")
    assert argv == [
        "-fsSL", "--retry", "3", "--connect-timeout", "20",
        "-o", f"{tmp_path}/dl/sha256sum.txt", sums,
    ]  # fmt: skip
    assert_not_injected(tmp_path)


@pytest.mark.parametrize("value", INJECTIONS)
def test_a_hostile_mirror_cannot_run_a_command_on_a_checksum_mismatch(
    value: str, tmp_path: Path
) -> None:
    base = "https://m.example/r" + value
    asset = "ollama-linux-amd64.tar.zst"
    fake_curl = f"""
out=""; url=""
while [ $# -gt 0 ]; do
  case "$1" in -o) out="$2"; shift 2;; -*) shift;; *) url="$1"; shift;; esac
done
case "$url" in
  */sha256sum.txt) printf '%s  ./{asset}\\n' {"0" * 64} > "$out";;
  *) printf 'not the release' > "$out";;
esac
"""
    (tmp_path / "dl").mkdir()
    script = ollama.install_linux("0.32.3", base, "amd64")
    result = run_sh(script, tmp_path, {"curl": fake_curl, "mktemp": f"echo {tmp_path}/dl"})
    assert result.returncode == 1
    have = hashlib.sha256(b"not the release").hexdigest()
    release = ollama.release_url(base, "0.32.3")
    assert result.stderr == (
        f"servekit: refusing {release}/{asset}: its sha256 is {have}, {release}/sha256sum.txt "
        f"says {'0' * 64} (a corrupt download or a tampered mirror); the installed Ollama is "
        "left as it is\n"
    )
    assert_not_injected(tmp_path)


def test_the_mirror_login_goes_to_curl_as_a_netrc_file_never_in_argv(tmp_path: Path) -> None:
    netrc = str(tmp_path / "net rc$(touch PWNED)")
    script = ollama.install_linux("0.32.3", "https://m.example/r", "amd64", netrc=netrc)
    result = run_sh(script, tmp_path, {"curl": CURL_FAILS, "mktemp": f"echo {tmp_path}/dl"})
    assert result.returncode == 1
    (argv,) = calls(tmp_path, "curl")
    assert argv[argv.index("--netrc-file") + 1] == netrc
    assert not any("@" in word or "password" in word for word in argv)
    assert_not_injected(tmp_path)


@pytest.mark.parametrize("value", INJECTIONS[:5])
def test_a_hostile_home_on_a_mac_stays_one_path(value: str, tmp_path: Path) -> None:
    home = str(tmp_path / f"home{value}".replace("\n", "_"))
    layout = ollama.MacLayout(home, "0.32.3")
    script = ollama.install_macos("0.32.3", "https://m.example/r", layout)
    parses(script)
    result = run_sh(script, tmp_path, {"curl": CURL_FAILS})
    assert result.returncode == 1, result.stderr
    assert Path(layout.root).is_dir()  # made where the layout says, nowhere else
    (argv,) = calls(tmp_path, "curl")
    assert argv[-1] == "https://m.example/r/v0.32.3/sha256sum.txt"
    assert argv[-2].startswith(f"{layout.root}/.download.")
    assert_not_injected(tmp_path)


@pytest.mark.parametrize("value", INJECTIONS)
def test_the_readiness_wait_prints_a_hostile_version_literally(value: str, tmp_path: Path) -> None:
    version = "0.32.3" + value
    url = "http://127.0.0.1:11434"
    script = ollama.ready_command(url, version, 0, "echo LOG")
    parses(script)
    result = run_sh(script, tmp_path, {"curl": "exit 7"})
    assert result.returncode == 1
    assert result.stderr == (
        f"servekit: Ollama {version} did not answer GET {url}/ within 0 s; its last log lines:\n"
        "LOG\n"
    )
    assert_not_injected(tmp_path)


@pytest.mark.parametrize("value", INJECTIONS)
def test_pull_and_delete_send_a_hostile_model_name_as_data(value: str, tmp_path: Path) -> None:
    model = "llama3" + value
    pull = ollama.pull_command(model, "http://127.0.0.1:11434")
    parses(pull)
    result = run_sh(pull, tmp_path, {"curl": 'echo \'{"status":"success"}\''})
    assert result.returncode == 0, result.stderr
    (argv,) = calls(tmp_path, "curl")
    body = argv[argv.index("--data-binary") + 1]
    assert json.loads(body)["model"] == model
    assert argv[-1] == "http://127.0.0.1:11434/api/pull"
    delete = ollama.delete_command(model, "http://127.0.0.1:11434")
    assert shlex.split(delete)[-1] == "http://127.0.0.1:11434/api/delete"
    assert json.loads(shlex.split(delete)[-2])["model"] == model
    assert_not_injected(tmp_path)


# --- uv/pip commands --------------------------------------------------------------------------


@pytest.mark.parametrize("value", INJECTIONS)
def test_python_environment_commands_keep_each_value_one_argument(
    value: str, tmp_path: Path
) -> None:
    index = "https://pypi.example/simple" + value
    venv = "/opt/servekit/venvs/x" + value
    if shell.CONTROL.search(value):  # a URL with a newline is refused outright
        with pytest.raises(ValueError, match="control character"):
            pyenv.bootstrap_uv(index, "0.13.9", venv)
        index = "https://pypi.example/simple"
    bootstrap = pyenv.bootstrap_uv(index, "0.13.9", venv)
    parses(bootstrap)
    words = shlex.split(bootstrap)
    split = words.index("&&")  # the only unquoted `&&`: between the two commands
    assert words[:split] == ["python3", "-m", "venv", venv]
    assert words[split + 1] == f"{venv}/bin/pip" and "&&" not in words[split + 1 :]
    assert words[-3:] == ["--index-url", index, "uv==0.13.9"]
    install = pyenv.install_packages(venv, ["vllm==0.33.0" + value], index, "uv")
    parses(install)
    words = shlex.split(install)
    assert words[words.index("--index-url") + 1] == index
    assert words[-1] == "vllm==0.33.0" + value
    assert shlex.split(pyenv.create_venv(venv, uv="/uv"))[-1] == venv
    # run with uv stubbed: uv gets exactly these arguments, and nothing else runs
    result = run_sh(install, tmp_path, {"uv": "exit 0"})
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path, "uv") == [words[1:]]
    assert_not_injected(tmp_path)


# --- the cuda-keyring check -------------------------------------------------------------------


def test_a_keyring_deb_with_the_pinned_digest_passes(tmp_path: Path) -> None:
    deb = tmp_path / "keyring.deb"
    deb.write_bytes(b"NVIDIA's cuda-keyring")
    pinned = hashlib.sha256(deb.read_bytes()).hexdigest()
    script = nvidia.keyring_verify_command(str(deb), pinned, "https://m.example/k.deb")
    parses(script)
    result = run_sh(script, tmp_path, {})
    assert result.returncode == 0, result.stderr
    assert deb.exists()


@pytest.mark.parametrize("value", INJECTIONS)
def test_a_tampered_keyring_deb_is_refused_and_deleted(value: str, tmp_path: Path) -> None:
    deb = tmp_path / "keyring.deb"
    deb.write_bytes(b"a tampered package")
    pinned = hashlib.sha256(b"NVIDIA's cuda-keyring").hexdigest()
    url = "https://m.example/k.deb" + value
    script = nvidia.keyring_verify_command(str(deb), pinned, url)
    parses(script)
    result = run_sh(script + " && touch INSTALLED", tmp_path, {})
    assert result.returncode == 1
    have = hashlib.sha256(b"a tampered package").hexdigest()
    assert result.stderr.startswith(f"servekit: refusing {url}: its sha256 is {have}, ")
    assert f"servekit pins {pinned}" in result.stderr
    assert not deb.exists() and not (tmp_path / "INSTALLED").exists()
    assert_not_injected(tmp_path)


def test_a_keyring_pin_must_be_a_sha256() -> None:
    with pytest.raises(ValueError):
        nvidia.keyring_verify_command("/tmp/x", "abc; touch PWNED", "https://m.example/k.deb")
