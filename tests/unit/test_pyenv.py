"""The uv/venv command builders quote every value and pick pip's trust flags by URL scheme."""

from __future__ import annotations

import shlex

import pytest

from servekit import pyenv

LOCAL_INDEX = "http://10.0.0.5:8080/simple/"


def test_bootstrap_uv_makes_a_venv_and_pins_uv() -> None:
    command = pyenv.bootstrap_uv(LOCAL_INDEX, version="0.13.9", uv_venv="/opt/servekit/uv")
    make_venv, install = command.split(" && ")
    assert shlex.split(make_venv) == ["python3", "-m", "venv", "/opt/servekit/uv"]
    argv = shlex.split(install)
    assert argv[0] == "/opt/servekit/uv/bin/pip"
    assert argv[-1] == "uv==0.13.9"
    assert argv[argv.index("--index-url") + 1] == LOCAL_INDEX
    assert argv[argv.index("--trusted-host") + 1] == "10.0.0.5"


def test_https_index_is_not_marked_trusted() -> None:
    assert pyenv.pip_index_args("https://pypi.org/simple/") == [
        "--index-url",
        "https://pypi.org/simple/",
    ]


def test_create_venv_uses_the_system_python() -> None:
    argv = shlex.split(pyenv.create_venv("/opt/my env"))
    assert argv[:2] == [pyenv.uv_binary(), "venv"]
    assert "--no-managed-python" in argv
    assert argv[-1] == "/opt/my env"


def test_install_packages_quotes_requirements_and_targets_the_venv() -> None:
    command = pyenv.install_packages("/opt/vllm", ["vllm==0.33.0", "pkg[extra]>=1,<2"], LOCAL_INDEX)
    argv = shlex.split(command)
    assert argv[:3] == [pyenv.uv_binary(), "pip", "install"]
    assert argv[argv.index("--python") + 1] == "/opt/vllm/bin/python"
    assert argv[argv.index("--index-url") + 1] == LOCAL_INDEX
    assert argv[-2:] == ["vllm==0.33.0", "pkg[extra]>=1,<2"]
    assert "'pkg[extra]>=1,<2'" in command


def test_install_packages_needs_a_requirement() -> None:
    with pytest.raises(ValueError):
        pyenv.install_packages("/opt/vllm", [])
