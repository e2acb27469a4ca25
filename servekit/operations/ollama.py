"""pyinfra operations for Ollama: install a pinned release, wait until the server answers, and
sync its models with the fleet's list.

Each reads facts, compares with what the fleet wants, and yields the commands from
`servekit.ollama` or a noop. Models go through the API on the host itself: Ollama listens on
loopback, so the control machine does not call it directly; each request is `curl` run on the
host over the deploy's own SSH connection (or locally for `@local`). Pulls stream
`POST /api/pull`; the NDJSON is read on the host line by line (`servekit.ollama.PULL_AWK`), every
line checked for an `error` field, and its progress lines are printed here as they come.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pyinfra import logger
from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.operation import operation
from pyinfra.api.state import State
from pyinfra.context import host

from servekit import ollama
from servekit.facts.ollama import OllamaModels, OllamaVersion
from servekit.hostplan import OllamaHost
from servekit.ollama import MacLayout, ReleaseError, System
from servekit.operations.common import Commands, failure

SAFE_URL = re.compile(r"^https?://[^\s\"'`$\\]+$")


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

        from servekit.operations import ollama

        ollama.release(version="0.32.3", base_url=mirror, system="linux", machine="x86_64")
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

    **Example:**

    .. code:: python

        from servekit.operations import ollama

        ollama.answers(
            name="Wait for Ollama to answer",
            url="http://127.0.0.1:11434",
            version="0.32.3",
            log_command="journalctl -u ollama.service -n 30 --no-pager",
            _if=restarted.did_change,
        )
    """
    yield StringCommand(ollama.ready_command(url, version, timeout_s, log_command))


def pull(state: State, host: Host, model: str, url: str) -> bool:
    """Pull one model on `host`, showing progress; log why and return False if it fails."""
    command = StringCommand(ollama.pull_command(model, url))
    ok, output = host.run_shell_command(command, print_output=True)
    if ok:
        return True
    lines = [line for line in output.stdout_lines if line.strip()]
    reasons = [line for line in lines if line.startswith(f"{model}: error: ")]
    reason = reasons[-1].removeprefix(f"{model}: error: ") if reasons else " / ".join(lines[-3:])
    host.log_styled(
        f"could not pull model {model!r}: {reason or 'no output'}", fg="red", log_func=logger.error
    )
    return False


@operation()
def models(models: list[str], url: str, prune: bool = False) -> Commands:
    """
    Pull the declared models the server lacks (`POST /api/pull`) and, with `prune`, delete the
    ones not declared (`DELETE /api/delete`). Names compare as Ollama normalises them
    (`llama3.2` is `llama3.2:latest`).

    + models: the models the host must hold
    + url: the server as reached from the host itself (`http://127.0.0.1:11434`)
    + prune: delete models that are not declared

    Before the server runs (a dry run of a first deploy) every declared model counts as missing;
    when the deploy runs, a server that does not answer is an error.

    **Example:**

    .. code:: python

        from servekit.operations import ollama

        ollama.models(models=["llama3.1:8b"], url="http://127.0.0.1:11434", prune=True)
    """
    present = host.get_fact(OllamaModels, url=url)
    if present is None:
        if host.state.is_executing:
            yield failure(
                f"servekit: {host.name}: the Ollama API at {url} does not answer "
                "(GET /api/tags): is the service running?"
            )
            return
        present = []
    changes = ollama.model_changes(models, present, prune)
    if not changes.pull and not changes.delete:
        host.noop(f"Ollama holds {', '.join(models) or 'no models'}" + (", nothing else" * prune))
        return
    for name in changes.pull:
        yield FunctionCommand(pull, (name, url), {})
    for name in changes.delete:
        yield StringCommand(ollama.delete_command(name, url))


def release_source_problem(base_url: str) -> str | None:
    """Why `base_url` (sources.ollama_releases) cannot be used, or None. A login in the URL is
    refused and never shown: it holds a password."""
    if not SAFE_URL.match(base_url):
        return f"sources.ollama_releases must be an http(s) URL, not {base_url!r}"
    if "@" in base_url.split("/")[2]:
        return (
            "sources.ollama_releases carries a login (user:password@): put it in "
            "Sources(mirror_credentials=SecretRef(file=...)), a netrc file servekit writes 0600"
        )
    return None


def answer_and_sync(
    settings: OllamaHost, version: str, sudo: bool, log_command: str, restarted: Callable[[], bool]
) -> None:
    """After a (re)start wait for the API, then pull (and prune) the fleet's models through it."""
    url = ollama.api_url(settings.listen)
    answers(
        name="Wait for Ollama to answer",
        _sudo=sudo,
        url=url,
        version=version,
        log_command=log_command,
        _if=restarted,
    )
    models(
        name="Sync the fleet's models",
        _sudo=sudo,
        models=settings.models,
        url=url,
        prune=settings.prune,
    )
