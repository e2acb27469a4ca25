"""Shell commands that set up Python environments on a host with uv, from a configurable index.

Pure functions: they return command strings for deploys (`server.shell`) to run; every value is
shell-quoted. uv itself is bootstrapped with pip into a venv of its own, so a host needs only
Debian's `python3` and `python3-venv` (apt-installed by the deploy first).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from servekit import shell
from servekit.catalog import tool_version

UV_VERSION = tool_version("uv")
"""The uv release the deploys install (pinned in servekit/catalog/versions.toml)."""

UV_VENV = "/opt/servekit/uv"
"""The venv that holds uv itself, apart from any environment uv creates."""

PYPI_SIMPLE = "https://pypi.org/simple/"


def uv_binary(uv_venv: str = UV_VENV) -> str:
    """Path of the `uv` executable inside the venv `bootstrap_uv` creates."""
    return f"{uv_venv}/bin/uv"


def venv_python(venv: str) -> str:
    """Path of a venv's Python interpreter."""
    return f"{venv}/bin/python"


def plain_url(url: str) -> str:
    """`url` unchanged, or ValueError when it carries a login (`user:pass@`): a login would
    be on the command line and in the deploy's output; it belongs in
    `Sources.mirror_credentials` (a netrc the commands read through NETRC)."""
    if urlsplit(url).username is not None or shell.CONTROL.search(url):
        raise ValueError(
            "an index URL with a login or a control character is refused: put the login in "
            "Sources(mirror_credentials=SecretRef(...))"
        )
    return url


def _with_netrc(argv: Sequence[str], netrc: str | None) -> str:
    """The command line of `argv`, run with NETRC naming the mirror logins (only its path)."""
    command = shell.join(argv)
    return f"{shell.assignment('NETRC', netrc)} {command}" if netrc else command


def pip_index_args(index_url: str) -> list[str]:
    """pip's arguments for one index; a plain-HTTP index must also be named a trusted host."""
    args = ["--index-url", plain_url(index_url)]
    parts = urlsplit(index_url)
    if parts.scheme == "http" and parts.hostname:
        args += ["--trusted-host", parts.hostname]
    return args


def bootstrap_uv(
    index_url: str = PYPI_SIMPLE,
    version: str = UV_VERSION,
    uv_venv: str = UV_VENV,
    *,
    netrc: str | None = None,
) -> str:
    """Create the venv for uv and pip-install `uv==version` into it from `index_url` (with the
    mirror logins of the netrc file `netrc`, when given)."""
    pip = f"{uv_venv}/bin/pip"
    install = [pip, "install", "--disable-pip-version-check", "--no-input", "--quiet"]
    return " && ".join(
        [
            shell.join(["python3", "-m", "venv", uv_venv]),
            _with_netrc([*install, *pip_index_args(index_url), f"uv=={version}"], netrc),
        ]
    )


def create_venv(venv: str, python: str = "python3", uv: str = uv_binary()) -> str:
    """Create `venv` with uv from the host's own Python (never a downloaded interpreter)."""
    return shell.join([uv, "venv", "--quiet", "--python", python, "--no-managed-python", venv])


def install_packages(
    venv: str,
    requirements: Sequence[str],
    index_url: str = PYPI_SIMPLE,
    uv: str = uv_binary(),
    *,
    extra_index_urls: Sequence[str] = (),
    index_strategy: str | None = None,
    quiet: bool = True,
    netrc: str | None = None,
) -> str:
    """Install pinned requirements (`'pkg==ver'`, ...) into `venv` with uv from `index_url`.

    uv trusts the host's certificate store (`--system-certs`), not only its built-in roots, so a
    mirror or proxy with an internal CA works as it does for pip and apt. `extra_index_urls` (a
    CUDA build's wheel and PyTorch indexes) and `index_strategy` are passed to uv as given.
    Mirror logins come from the netrc file `netrc` (NETRC in the command's environment).
    """
    if not requirements:
        raise ValueError("install_packages needs at least one requirement")
    args = [
        uv,
        "pip",
        "install",
        *(["--quiet"] if quiet else []),
        "--system-certs",
        "--python",
        venv_python(venv),
        "--index-url",
        plain_url(index_url),
    ]
    for url in extra_index_urls:
        args += ["--extra-index-url", plain_url(url)]
    if index_strategy:
        args += ["--index-strategy", index_strategy]
    return _with_netrc([*args, *requirements], netrc)
