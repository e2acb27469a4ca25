"""pyinfra operations for Ollama: install a pinned release, and wait until the server answers.

Each reads facts, compares with what the fleet wants, and yields the commands from
`servekit.ollama` or a noop.
"""

from __future__ import annotations

from pyinfra.api.command import StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit import ollama
from servekit.deploys.common import Commands, failure
from servekit.facts.ollama import OllamaVersion
from servekit.ollama import MacLayout, ReleaseError, System


@operation()
def release(
    version: str,
    base_url: str,
    system: System,
    machine: str = "x86_64",
    home: str = "",
    netrc: str | None = None,
) -> Commands:
    """
    Install Ollama `version` from its release (verified against `sha256sum.txt`) unless the
    installed binary already is that version.

    + version: the pinned Ollama version
    + base_url: where releases live (`<base_url>/v<version>/<asset>`), GitHub or a mirror
    + system: `linux` (to /usr/local, as root) or `macos` (to ~/.servekit/ollama/<version>)
    + machine: `uname -m` of a Linux host (x86_64, aarch64)
    + home: the login user's home (macOS)
    + netrc: a 0600 netrc file with the mirror's login (curl --netrc-file), if it needs one

    **Example:**

    .. code:: python

        from servekit.deploys import ollama_ops

        ollama_ops.release(version="0.32.3", base_url=mirror, system="linux", machine="x86_64")
    """
    if system == "macos":
        layout = MacLayout(home, version)
        binary = layout.binary
    else:
        binary = ollama.LINUX_BINARY
    installed = host.get_fact(OllamaVersion, binary=binary)
    if installed == version:
        host.noop(f"Ollama {version} is installed ({binary})")
        return
    if system == "macos":
        yield StringCommand(ollama.install_macos(version, base_url, layout, netrc))
        return
    try:
        arch = ollama.go_arch(machine)
    except ReleaseError as error:
        yield failure(f"servekit: {host.name}: {error}")
        return
    yield StringCommand(ollama.install_linux(version, base_url, arch, netrc))


@operation(is_idempotent=False)
def answers(
    url: str, version: str, log_command: str, timeout_s: int = ollama.READY_TIMEOUT_S
) -> Commands:
    """
    Wait (bounded) until the server at `url` answers `GET /` and reports `version`; on timeout
    show its last log lines and fail. Run it only after a start or restart (`_if=...`).

    + url: the server as reached from the host itself
    + version: the version it must report (`/api/version`) once the new binary runs
    + log_command: a command printing the server's recent log (journalctl, tail)
    + timeout_s: how long to wait
    """
    yield StringCommand(ollama.ready_command(url, version, timeout_s, log_command))
