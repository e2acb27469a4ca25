"""The bad-fleet regression set (issue 11): every inventory in tests/bad_fleets/ must be refused.

Each file declares one fleet with exactly one thing wrong, and a header the harness reads::

    # family: ports                          (the issue's field family, for the report)
    # expect-field: serve[0].port | ...      (the field path the error must name; any of these)
    # refused-by: plan render pyinfra        (the commands that must refuse it)
    # deploy: vllm                           (deploys/<x>.py given to pyinfra)
    # listen: 10022                          (optional: a fixed SSH port the fleet declares)

Every host is 127.0.0.1, its SSH port a TCP listener this module opens (the inventories read it
from SERVEKIT_BADFLEET_PORT). For each file: `servekit plan` and `servekit render` (in-process,
with typer's CliRunner) and `pyinfra FILE deploys/<x>.py --dry -y` (subprocesses, a few at a time)
must exit non-zero, accept no connection on the listener, name the field and a `fix:`, and print
no traceback. Commands not in `refused-by` (plan and render of secret cases are offline and show
secrets as placeholders) must not crash either. The fleets in tests/bad_fleets/control/ are the
bases the cases change in one place: they must be accepted, and pyinfra must reach the listener,
which proves that "no connection" means something.

Broken secrets (modes, FIFOs, devices, owners) cannot live in git: the harness makes them in a
temporary folder (SERVEKIT_BAD_SECRETS), with local checkpoints whose config.json is broken
(SERVEKIT_BADFLEET_DATA).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest
from typer.testing import CliRunner

from servekit.cli import app

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "bad_fleets"
PYINFRA = Path(sys.executable).with_name("pyinfra")
SERVEKIT = Path(sys.executable).with_name("servekit")
PYINFRA_WORKERS = 3
PYINFRA_TIMEOUT_S = 90
VALID_KEY = "sk-badfleet-valid-0123456789abcdef"
COMMANDS = ("plan", "render", "pyinfra")


@dataclass(frozen=True)
class Case:
    """One inventory file of the corpus and what its header promises."""

    path: Path
    family: str
    fields: tuple[str, ...]
    refused_by: frozenset[str]
    deploy: str
    listen: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.path.stem


def read_case(path: Path) -> Case:
    """Parse the `# key: value` header of a corpus file."""
    header: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^# ([a-z-]+): (.*)$", line)
        if not match:
            break
        header[match[1]] = match[2].strip()
    missing = {"family", "expect-field", "refused-by", "deploy"} - set(header)
    assert not missing, f"{path.name}: header lacks {sorted(missing)}"
    refused = frozenset(header["refused-by"].split()) - {"none"}
    assert refused <= set(COMMANDS), f"{path.name}: refused-by {header['refused-by']!r}"
    assert (ROOT / "deploys" / f"{header['deploy']}.py").is_file(), path.name
    return Case(
        path=path,
        family=header["family"],
        fields=tuple(f.strip() for f in header["expect-field"].split("|")),
        refused_by=refused,
        deploy=header["deploy"],
        listen=tuple(int(p) for p in header.get("listen", "").split()),
    )


CASES = [read_case(p) for p in sorted(CORPUS.glob("*.py"))]
CONTROLS = [read_case(p) for p in sorted((CORPUS / "control").glob("*.py"))]


# ------------------------------------------------------------------ listeners


class Listener:
    """A TCP listener on 127.0.0.1 that counts (and at once closes) every connection."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


# ------------------------------------------------------------------ broken secrets and data


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def make_secrets(folder: Path) -> Path:
    """Secret files of every broken kind (and one valid), as git cannot keep them."""
    folder.mkdir(mode=0o700)
    _write(folder / "valid", f"{VALID_KEY}\n".encode())
    # The cloud fleets' SSH key (pyinfra loads it before it resolves the node's name).
    paramiko.RSAKey.generate(2048).write_private_key_file(str(folder / "ssh-key"))
    (folder / "directory").mkdir(mode=0o700)
    os.mkfifo(folder / "fifo", 0o600)
    (folder / "zero-link").symlink_to("/dev/zero")
    _write(folder / "mode-0644", f"{VALID_KEY}\n".encode(), 0o644)
    _write(folder / "mode-0640", f"{VALID_KEY}\n".encode(), 0o640)
    _write(folder / "other-owner", f"{VALID_KEY}\n".encode())
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder / "other-owner", nobody.pw_uid, nobody.pw_gid)
    _write(folder / "too-large", (VALID_KEY + "\n").encode() + b"x" * (70 * 1024))
    _write(folder / "empty", b"")
    _write(folder / "comment", f"# engine key for the fleet\n{VALID_KEY}\n".encode())
    _write(folder / "whitespace", b"   \n\t\n  \n")
    _write(folder / "not-utf8", b"\xff\xfe\x00\x9f key \xc3\x28\n")
    _write(folder / "blank-first", f"\n{VALID_KEY}\n".encode())
    return folder


def make_checkpoints(folder: Path) -> Path:
    """Local checkpoints whose config.json cannot be planned from."""
    llama = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 32,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "torch_dtype": "bfloat16",
    }
    broken = {
        "no-hidden-size": {k: v for k, v in llama.items() if k != "hidden_size"},
        "zero-heads": {**llama, "num_attention_heads": 0, "num_key_value_heads": 0},
    }
    for name, config in broken.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text(json.dumps(config))
    (folder / "not-json").mkdir()
    (folder / "not-json" / "config.json").write_text("{not json")
    return folder


@dataclass
class Bench:
    """The environment every case runs in."""

    root: Path
    env: dict[str, str]
    fixed: dict[int, Listener | None] = field(default_factory=dict)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    root = tmp_path_factory.mktemp("bad-fleets")
    env = {
        "SERVEKIT_BAD_SECRETS": str(make_secrets(root / "secrets")),
        "SERVEKIT_BADFLEET_DATA": str(make_checkpoints(root / "data")),
        "SERVEKIT_BADFLEET_KEY": VALID_KEY,
        "SERVEKIT_BADFLEET_NEWLINE": f"{VALID_KEY}\nX-Injected: yes",
        "SERVEKIT_BADFLEET_SPACES": "   ",
        "SERVEKIT_STATE_DIR": str(root / "cloud-state"),
        # No Hugging Face or hub cache lookups from the machine running the tests.
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_OFFLINE": "1",
    }
    fixed: dict[int, Listener | None] = {}
    for port in sorted({p for case in CASES + CONTROLS for p in case.listen}):
        try:
            fixed[port] = Listener(port)
        except OSError:
            fixed[port] = None  # taken here: the case still runs, its port is not watched
    yield Bench(root, env, fixed)
    for listener in fixed.values():
        if listener is not None:
            listener.close()


# ------------------------------------------------------------------ running the commands


@dataclass(frozen=True)
class Outcome:
    """How one command ended."""

    command: str
    code: int
    output: str
    crashed: str = ""  # an exception that escaped (in-process), or a timeout
    connections: int = 0


def _case_env(bench: Bench, port: int) -> dict[str, str]:
    env = {**bench.env, "SERVEKIT_BADFLEET_PORT": str(port)}
    return env


def run_cli(
    case: Case, command: str, bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp: Path
) -> Outcome:
    """`servekit plan|render` in this process (offline: no listener can be reached); broken
    secrets (FIFOs, /dev/zero) in a subprocess, so that a hang or a huge read fails one test."""
    for key, value in _case_env(bench, 9).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SERVEKIT_BADFLEET_UNSET", raising=False)
    args = [command, str(case.path)] + ([str(tmp / "out")] if command == "render" else [])
    if case.family == "secrets":
        try:
            done = subprocess.run(
                [str(SERVEKIT), *args],
                env=dict(os.environ),
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return Outcome(command, -1, "", "no answer in 60 s")
        return Outcome(command, done.returncode, done.stdout + done.stderr)
    result = CliRunner().invoke(app, args)
    crashed = ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crashed = f"{type(result.exception).__name__}: {result.exception}"
    return Outcome(command, result.exit_code, result.output, crashed)


def run_pyinfra(case: Case, bench: Bench) -> Outcome:
    """`pyinfra FILE deploys/<x>.py --dry -y` against a fresh listener."""
    listener = Listener()
    before = {p: (lst.accepted if lst else 0) for p, lst in bench.fixed.items()}
    env = {k: v for k, v in os.environ.items() if k != "SERVEKIT_BADFLEET_UNSET"}
    env.update(_case_env(bench, listener.port))
    env["COLUMNS"] = "200"
    args = [str(PYINFRA), str(case.path), str(ROOT / "deploys" / f"{case.deploy}.py")]
    try:
        done = subprocess.run(
            [*args, "--dry", "-y"],
            cwd=bench.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=PYINFRA_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        code, output, crashed = done.returncode, done.stdout + done.stderr, ""
    except subprocess.TimeoutExpired as timeout:
        out = timeout.stdout or b""
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        code, output, crashed = -1, text, f"no answer in {PYINFRA_TIMEOUT_S} s"
    finally:
        time.sleep(0.05)
        listener.close()
    fixed = sum(
        (lst.accepted if lst else 0) - before[p]
        for p, lst in bench.fixed.items()
        if p in case.listen
    )
    return Outcome("pyinfra", code, output, crashed, listener.accepted + fixed)


@pytest.fixture(scope="module")
def pyinfra_outcomes(bench: Bench, request: pytest.FixtureRequest) -> dict[str, Outcome]:
    """The pyinfra run of every selected case and control, a few at a time (mostly start-up)."""
    selected = {
        item.callspec.params["case"].path.as_posix()
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)
    }
    chosen = [c for c in CASES + CONTROLS if c.path.as_posix() in selected]
    started = time.monotonic()
    with ThreadPoolExecutor(PYINFRA_WORKERS) as pool:
        outcomes = dict(
            zip(
                [c.path.as_posix() for c in chosen],
                pool.map(lambda c: run_pyinfra(c, bench), chosen),
                strict=True,
            )
        )
    elapsed = time.monotonic() - started
    print(f"\n{len(outcomes)} pyinfra runs in {elapsed:.0f} s", file=sys.stderr)
    return outcomes


# ------------------------------------------------------------------ assertions


def assert_refused(case: Case, outcome: Outcome) -> None:
    """Refused cleanly: non-zero exit, no traceback, the field named, a fix, no connection."""
    where = f"{case.name}: {outcome.command}"
    text = outcome.output
    assert not outcome.crashed, f"{where} crashed: {outcome.crashed}\n{text[-3000:]}"
    assert outcome.connections == 0, f"{where} connected to the host:\n{text[-1500:]}"
    assert outcome.code != 0, f"{where} accepted the fleet:\n{text[-1500:]}"
    assert "Traceback" not in text, f"{where} printed a traceback:\n{text[-3000:]}"
    flat = re.sub(r"\s+", " ", text)
    assert any(f in text or f in flat for f in case.fields), (
        f"{where} does not name {' or '.join(case.fields)}:\n{text[-3000:]}"
    )
    assert re.search(r"\bfix:", text), f"{where} gives no 'fix:':\n{text[-3000:]}"


def assert_no_crash(case: Case, outcome: Outcome) -> None:
    """A command not expected to refuse (secrets are placeholders offline) still never crashes,
    and when it does refuse, it says where and how to fix it."""
    where = f"{case.name}: {outcome.command}"
    assert not outcome.crashed, f"{where} crashed: {outcome.crashed}\n{outcome.output[-3000:]}"
    assert "Traceback" not in outcome.output, f"{where}: traceback\n{outcome.output[-3000:]}"
    if outcome.code != 0:
        assert re.search(r"\bfix:", outcome.output), f"{where}:\n{outcome.output[-3000:]}"


def _needs_root(case: Case) -> None:
    if "other-owner" in case.path.read_text() and os.geteuid() != 0:
        pytest.skip("a secret owned by another user needs root to chown")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["plan", "render"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_servekit_refuses(
    case: Case, command: str, bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _needs_root(case)
    outcome = run_cli(case, command, bench, monkeypatch, tmp_path)
    if command in case.refused_by:
        assert_refused(case, outcome)
        if command == "render":
            assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*"))
    else:
        assert_no_crash(case, outcome)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_pyinfra_refuses_before_connecting(
    case: Case, bench: Bench, pyinfra_outcomes: dict[str, Outcome]
) -> None:
    _needs_root(case)
    outcome = pyinfra_outcomes[case.path.as_posix()]
    if "pyinfra" in case.refused_by:
        assert_refused(case, outcome)
    else:
        assert_no_crash(case, outcome)
        assert outcome.connections == 0


@pytest.mark.parametrize("case", CONTROLS, ids=lambda c: c.name)
def test_controls_are_accepted_and_reach_the_listener(
    case: Case,
    bench: Bench,
    pyinfra_outcomes: dict[str, Outcome],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The base fleets plan, render, and make pyinfra connect: so a case's refusal comes from
    its one change, and the listener would have seen a connection had one been made."""
    assert not case.refused_by
    for command in ("plan", "render"):
        outcome = run_cli(case, command, bench, monkeypatch, tmp_path)
        assert outcome.code == 0 and not outcome.crashed, f"{command}: {outcome.output[-2000:]}"
    outcome = pyinfra_outcomes[case.path.as_posix()]
    if case.name == "good_cloud":
        # No address before `servekit cloud apply`: nothing to connect to, and pyinfra says so.
        assert outcome.connections == 0 and "no address yet" in outcome.output
    else:
        assert outcome.connections >= 1, f"pyinfra never reached the listener:\n{outcome.output}"
    # The listener hangs up before SSH's banner, so paramiko's own traceback may follow; loading
    # the inventory must print none.
    loading = outcome.output.split("--> Connecting to hosts", 1)[0]
    assert "Traceback" not in loading and "Connecting to hosts" in outcome.output


def test_corpus_covers_every_family() -> None:
    """At least 120 cases (issue 11), each family of the issue present, one file per case."""
    families = {case.family for case in CASES}
    assert len(CASES) >= 120
    assert families == {
        "types",
        "paths",
        "ports",
        "versions",
        "secrets",
        "gpu-model",
        "cloud",
        "injection",
    }
    assert len({c.name for c in CASES}) == len(CASES)


def test_listener_counts_connections() -> None:
    listener = Listener()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=2):
        pass
    deadline = time.monotonic() + 2
    while listener.accepted == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    listener.close()
    assert listener.accepted == 1


def test_header_parser_rejects_an_incomplete_header(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("# family: ports\n# expect-field: a\n")
    with pytest.raises(AssertionError, match="header lacks"):
        read_case(bad)
    shutil.rmtree(tmp_path)
