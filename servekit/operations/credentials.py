"""Write a secret file on a host (mirror logins): mode 0600 from the first byte, its content on
standard input (never in the command line or the deploy's output), replaced atomically."""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any

from pyinfra.api.command import StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import File, Sha256File

from servekit import credentials, shell
from servekit.hostplan import SourcesPlan
from servekit.operations.common import Commands, problem


def write_command(path: str, owner: str | None) -> str:
    """Shell: standard input into `path` through a 0600 temp file in the same folder (umask 077
    first, so no moment is world-readable), then renamed over it."""
    q = shell.quote
    folder = posixpath.dirname(path)
    chown = f' && chown {q(owner)} "$tmp"' if owner else ""
    return (
        f"umask 077 && mkdir -p {q(folder)} && tmp=$(mktemp {q(path + '.XXXXXX')}) && "
        f'cat > "$tmp" && chmod 0600 "$tmp"{chown} && mv -f "$tmp" {q(path)}'
    )


@operation()
def secret_file(path: str, content: str, owner: str | None = "root:root") -> Commands:
    """
    Write `content` to `path` with mode 0600 (owned by `owner`), unless it is there already.

    + path: where the file goes
    + content: what it holds (a secret: it travels on standard input)
    + owner: `user:group` for chown (None: the login user, on a Mac)

    **Example:**

    .. code:: python

        secret_file(
            name="Write the mirror login for netrc",
            path="/etc/servekit/netrc",
            content="machine pypi.example login alice password ...\\n",
        )
    """
    current = host.get_fact(File, path=path)
    digest = hashlib.sha256(content.encode()).hexdigest()
    if (
        current
        and current.get("mode") == 600
        and host.get_fact(Sha256File, path=path) == digest
        and (owner is None or f"{current.get('user')}:{current.get('group')}" == owner)
    ):
        host.noop(f"{path} is written (0600)")
        return
    yield StringCommand(write_command(path, owner), _stdin=content)


def mirror_login_files(
    sources: SourcesPlan | None,
    targets: list[tuple[str, str]],
    owner: str | None = "root:root",
    sudo: bool | None = None,
) -> bool | None:
    """Write the fleet's mirror credentials to each (path, kind) of `targets` (`netrc` or
    `apt`), 0600 and owned by `owner`; nothing when the fleet declares none. Whether there are
    credentials (the commands that download then name the netrc); None when they cannot be read:
    this host is stopped with the reason (never the content), and the deploy adds nothing more.
    `sudo` is passed on to the operations (None: the deploy's own setting)."""
    become: dict[str, Any] = {} if sudo is None else {"_sudo": sudo}
    try:
        ref = sources.mirror_credentials if sources is not None else None
        logins = credentials.read(ref.model_dump()) if ref is not None else None
    except credentials.CredentialsError as error:
        problem(name="Mirror credentials", message=str(error), **become)
        return None
    if logins is None:
        return False
    for path, kind in targets:
        text = (
            credentials.apt_auth_text(logins, sources.urls() if sources else {})
            if kind == "apt"
            else credentials.netrc_text(logins)
        )
        secret_file(
            name=f"Write the mirror login for {kind} ({path}, 0600)",
            path=path,
            content=text,
            owner=owner,
            **become,
        )
    return True
