"""Secrets are checked where pyinfra loads an inventory (before any connection, `--dry` too) and
by the deploys, with one check (servekit/secrets.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from servekit.errors import FleetError
from servekit.hostplan import SecretSource
from servekit.inventory import pyinfra_groups
from servekit.secrets import (
    MAX_SECRET_BYTES,
    SecretError,
    fleet_secret_problems,
    read_secret,
    read_secret_lines,
)
from servekit.spec import (
    Fleet,
    Gateway,
    Gpu,
    HuggingFace,
    SecretRef,
    Serve,
    Sources,
    SshHost,
)


def secret(path: Path, text: str = "sk-good\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def error_of(source: SecretSource) -> SecretError:
    with pytest.raises(SecretError) as caught:
        read_secret(source)
    assert caught.value.fix, caught.value
    return caught.value


def test_a_good_file_gives_its_first_line(tmp_path: Path) -> None:
    path = secret(tmp_path / "k", "  sk-first  \nsk-second\n# a comment\n\nsk-third\n")
    assert read_secret(SecretSource(file=str(path))) == "sk-first"
    assert read_secret_lines(SecretSource(file=str(path))) == ["sk-first", "sk-second", "sk-third"]


def test_mode_0400_and_a_symlink_to_a_good_file_are_fine(tmp_path: Path) -> None:
    path = secret(tmp_path / "k", mode=0o400)
    link = tmp_path / "link"
    link.symlink_to(path)
    assert read_secret(SecretSource(file=str(link))) == "sk-good"


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o660, 0o700, 0o604, 0o200])
def test_modes_other_than_0600_0400_refused(tmp_path: Path, mode: int) -> None:
    path = secret(tmp_path / "k", mode=mode)
    assert "chmod 600" in error_of(SecretSource(file=str(path))).fix


def test_missing_file(tmp_path: Path) -> None:
    error = error_of(SecretSource(file=str(tmp_path / "nope")))
    assert "No such file" in error.message and "umask 077" in error.fix


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "/dev/tty", "DIR"])
def test_devices_and_directories_refused_without_reading(tmp_path: Path, target: str) -> None:
    path = str(tmp_path) if target == "DIR" else target
    assert "not a regular file" in error_of(SecretSource(file=path)).message
    link = tmp_path / "link"
    link.symlink_to(path)
    assert "not a regular file" in error_of(SecretSource(file=str(link))).message


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    assert "not a regular file" in error_of(SecretSource(file=str(fifo))).message


def test_a_large_file_is_refused(tmp_path: Path) -> None:
    path = secret(tmp_path / "k", "sk\n" + "x" * MAX_SECRET_BYTES)
    assert "KiB" in error_of(SecretSource(file=str(path))).message


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("", "empty first line"),
        ("\nsk-late\n", "empty first line"),
        ("   \n", "empty first line"),
        ("# my engine key\nsk-real\n", "comment"),
        ("sk-a\x00b\n", "control character"),
        ("sk-a\u2028b\n", "control character"),
    ],
)
def test_bad_contents_refused(tmp_path: Path, text: str, word: str) -> None:
    path = secret(tmp_path / "k", text)
    assert word in error_of(SecretSource(file=str(path))).message


def test_binary_contents_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"\xff\xfe\x00")
    path.chmod(0o600)
    assert "UTF-8" in error_of(SecretSource(file=str(path))).message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = secret(tmp_path / "k")
    os.chown(path, 65534, 65534)
    assert "chown" in error_of(SecretSource(file=str(path))).fix


@pytest.mark.parametrize(
    ("value", "word"), [(None, "unset"), ("", "empty"), ("  ", "empty"), ("a\nb", "control")]
)
def test_bad_env_secrets_refused(
    monkeypatch: pytest.MonkeyPatch, value: str | None, word: str
) -> None:
    monkeypatch.delenv("SK_TEST_SECRET", raising=False)
    if value is not None:
        monkeypatch.setenv("SK_TEST_SECRET", value)
    assert word in error_of(SecretSource(env="SK_TEST_SECRET")).message


def test_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SK_TEST_SECRET", " sk-env ")
    assert read_secret(SecretSource(env="SK_TEST_SECRET")) == "sk-env"


def fleet_with(tmp_path: Path) -> Fleet:
    return Fleet(
        name="t",
        machines=[SshHost(name="gpu1", address="127.0.0.1", gpu=Gpu(model="A100-80GB"))],
        serve=[Serve(model="llama-3.1-8b-instruct")],
        gateway=Gateway(host="gpu1", api_keys=SecretRef(file=str(tmp_path / "clients"))),
        engine_api_key=SecretRef(file=str(tmp_path / "engine")),
        sources=Sources(weights=HuggingFace(token=SecretRef(env="SK_TEST_HF_TOKEN"))),
    )


def test_fleet_problems_name_each_broken_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SK_TEST_HF_TOKEN", raising=False)
    secret(tmp_path / "engine", mode=0o644)
    secret(tmp_path / "clients", "# keys\n")
    problems = fleet_secret_problems(fleet_with(tmp_path))
    assert [p.field for p in problems] == [
        "gateway.api_keys",
        "engine_api_key",
        "sources.weights.token",
    ]
    assert all(p.fix for p in problems)
    monkeypatch.setenv("SK_TEST_HF_TOKEN", "hf_x")
    secret(tmp_path / "engine")
    secret(tmp_path / "clients")
    assert fleet_secret_problems(fleet_with(tmp_path)) == []
    # the gateway's keys file has comments of its own: one may come first
    secret(tmp_path / "clients", "# name key [models=a,b]\nalice sk-alice-0123456789abcdef\n")
    assert fleet_secret_problems(fleet_with(tmp_path)) == []


def test_pyinfra_groups_names_the_broken_secret_and_the_inventory_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SK_TEST_HF_TOKEN", "hf_x")
    secret(tmp_path / "clients")
    with pytest.raises(FleetError) as caught:
        pyinfra_groups(fleet_with(tmp_path))
    assert caught.value.fields == ["engine_api_key"]
    assert "test_secrets.py" in caught.value.where


INVENTORY = """
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, SecretRef, Serve, SshHost

fleet = Fleet(
    name="secrets",
    machines=[SshHost(name="gpu1", address="127.0.0.1", ssh_port=9, ssh_user="root",
                      gpu=Gpu(model="A100-80GB"))],
    serve=[Serve(model="qwen2.5-7b-instruct")],
    engine_api_key=SecretRef(file={key!r}),
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


@pytest.mark.parametrize("key", ["/dev/zero", "MODE", "COMMENT"])
def test_pyinfra_dry_refuses_a_broken_secret_and_servekit_plan_does_not_read_it(
    tmp_path: Path, key: str
) -> None:
    if key == "MODE":
        key = str(secret(tmp_path / "k", mode=0o644))
    elif key == "COMMENT":
        key = str(secret(tmp_path / "k", "# engine key below\nsk\n"))
    inventory = tmp_path / "fleet.py"
    inventory.write_text(textwrap.dedent(INVENTORY).format(key=key))
    done = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", str(inventory), "exec", "--dry", "--", "true"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "engine_api_key" in done.stderr and "fix:" in done.stderr
    assert "fleet.py:5" in done.stderr  # the line that declared the fleet
    assert "Traceback" not in done.stderr and "Connecting" not in done.stdout + done.stderr
    planned = subprocess.run(
        [sys.executable, "-m", "servekit.cli", "plan", str(inventory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert planned.returncode == 0, planned.stderr


def test_s3_credentials_need_two_lines(tmp_path: Path) -> None:
    from servekit.spec import S3Bucket

    one = secret(tmp_path / "one", "AKIAEXAMPLE\n")
    fleet = Fleet(
        name="t",
        machines=[SshHost(name="gpu1", address="127.0.0.1")],
        sources=Sources(weights=S3Bucket(bucket="models", credentials=SecretRef(file=str(one)))),
    )
    (problem,) = fleet_secret_problems(fleet)
    assert problem.field == "sources.weights.credentials" and "second" in problem.fix
    secret(tmp_path / "one", "AKIAEXAMPLE\nsecret-key\n")
    assert fleet_secret_problems(fleet) == []
