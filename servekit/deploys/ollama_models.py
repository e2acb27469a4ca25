"""Sync an Ollama server's models with the fleet's list, through its API, from the host itself.

Ollama listens on loopback, so the control machine does not call the API directly: each request
is `curl` run on the host over the deploy's own SSH connection (or locally for `@local`). Pulls
stream `POST /api/pull`; the NDJSON is read on the host line by line (`servekit.ollama.PULL_AWK`),
every line checked for an `error` field, and its progress lines are printed here as they come.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.operation import operation
from pyinfra.api.state import State
from pyinfra.context import host

from servekit import ollama
from servekit.deploys.common import Commands, failure
from servekit.facts.ollama import OllamaModels


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

        from servekit.deploys import ollama_models

        ollama_models.models(models=["llama3.1:8b"], url="http://127.0.0.1:11434", prune=True)
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
