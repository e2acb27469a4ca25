"""Mirror logins (`Sources.mirror_credentials`): a netrc-format secret on the control machine,
written on hosts only to root-only (or, on a Mac, user-only) 0600 files, never into argv, deploy
output or a world-readable file.

- apt reads `/etc/apt/auth.conf.d/servekit.conf` (apt_auth.conf(5): "a netrc-like format with
  restrictive file permissions"; a `machine` without a protocol matches https only, so an http
  mirror gets an explicit `http://` entry).
- uv and pip read the netrc named by the `NETRC` environment variable (uv: docs.astral.sh/uv/
  concepts/authentication/http/#netrc-files; pip through requests, docs/user/authentication.rst),
  set in the install command's environment: only the file's path is on the command line.
- curl (Ollama's release downloads) reads it with `--netrc-file PATH`.

The secret is parsed strictly (only `machine`, `login`, `password`; no `default` or `macdef`,
whose meaning differs between these readers) and written back in one normalised form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from servekit import secrets
from servekit.hostplan import SecretSource

NETRC_FILE = "/etc/servekit/netrc"
"""The root-only netrc on Linux hosts (uv/pip through NETRC, curl through --netrc-file)."""
APT_AUTH_FILE = "/etc/apt/auth.conf.d/servekit.conf"
MAC_NETRC = ".servekit/netrc"
"""On a Mac, under the login user's home (the Ollama deploy never uses sudo there)."""
_TOKEN = re.compile(r"^[!#-~]+$")
"""A netrc token servekit writes: printable ASCII, no space, no `"` (no quoting needed by any of
the readers above)."""


class CredentialsError(ValueError):
    """The mirror credentials cannot be read or are not a netrc servekit can pass on safely."""


@dataclass(frozen=True)
class Login:
    """One `machine HOST login USER password PASS` entry."""

    machine: str
    login: str
    password: str

    def __repr__(self) -> str:  # never the password, in a traceback or a log
        return f"Login(machine={self.machine!r}, login={self.login!r}, password=<hidden>)"


def parse_netrc(text: str, origin: str) -> list[Login]:
    """The entries of a netrc text; CredentialsError (naming `origin`, never a value) when a
    token is not `machine`/`login`/`password`, a value is missing or holds a space, a quote or a
    control character, or no entry has a login and password."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    tokens = "\n".join(lines).split()  # whole-line comments, as curl and Python's netrc read them
    if any(not _TOKEN.match(token) for token in tokens):
        raise CredentialsError(
            f"mirror credentials ({origin}): a value holds a quote or a non-ASCII or control "
            "character; use plain tokens: machine HOST login USER password PASS"
        )
    logins: list[Login] = []
    current: dict[str, str] = {}

    def close() -> None:
        if current:
            missing = [k for k in ("login", "password") if k not in current]
            if missing:
                raise CredentialsError(
                    f"mirror credentials ({origin}): machine {current['machine']} has no "
                    f"{' or '.join(missing)}"
                )
            logins.append(Login(current["machine"], current["login"], current["password"]))
            current.clear()

    words = iter(tokens)
    for keyword in words:
        if keyword not in ("machine", "login", "password"):
            raise CredentialsError(
                f"mirror credentials ({origin}): {keyword!r} is not a token servekit passes on "
                "(only machine, login and password; no default or macdef entries)"
                if keyword in ("default", "macdef", "account")
                else f"mirror credentials ({origin}): expected machine, login or password, found "
                "another word (a value without its keyword?)"
            )
        value = next(words, None)
        if value is None or value in ("machine", "login", "password"):
            raise CredentialsError(f"mirror credentials ({origin}): {keyword} has no value")
        if keyword == "machine":
            close()
            _check_machine(value, origin)
            current["machine"] = value
        elif not current:
            raise CredentialsError(f"mirror credentials ({origin}): {keyword} before any machine")
        else:
            current[keyword] = value
    close()
    if not logins:
        raise CredentialsError(
            f"mirror credentials ({origin}) hold no entry: write "
            "`machine HOST login USER password PASS`, one line per mirror host"
        )
    return logins


def _check_machine(value: str, origin: str) -> None:
    host = value.split("://", 1)[-1].split("/", 1)[0]
    if not host or "@" in value:
        raise CredentialsError(f"mirror credentials ({origin}): {value!r} is not a host name")


def netrc_text(logins: Iterable[Login]) -> str:
    """A netrc for curl, uv and pip: one `machine` line per entry (the host, without protocol)."""
    lines = ["# Written by servekit from Sources.mirror_credentials: root-only, mode 0600."]
    for entry in logins:
        host = entry.machine.split("://", 1)[-1].split("/", 1)[0]
        lines.append(f"machine {host} login {entry.login} password {entry.password}")
    return "\n".join(lines) + "\n"


def apt_auth_text(logins: Iterable[Login], sources: Mapping[str, Any]) -> str:
    """apt's auth.conf.d file: each entry as written, plus an `http://` entry for a host that one
    of the fleet's http mirrors uses (apt matches a bare machine against https only)."""
    http_hosts = {
        parts.netloc.rsplit("@", 1)[-1]
        for url in sources.values()
        if isinstance(url, str) and (parts := urlsplit(url)).scheme == "http"
    }
    lines = ["# Written by servekit from Sources.mirror_credentials: root-only, mode 0600."]
    for entry in logins:
        lines.append(f"machine {entry.machine} login {entry.login} password {entry.password}")
        host = entry.machine.split("://", 1)[-1].split("/", 1)[0]
        if "://" not in entry.machine and host in http_hosts:
            lines.append(
                f"machine http://{entry.machine} login {entry.login} password {entry.password}"
            )
    return "\n".join(lines) + "\n"


def reference(sources: Mapping[str, Any]) -> dict[str, Any] | None:
    """The plan's `mirror_credentials` reference ({file|env}), or None."""
    ref = sources.get("mirror_credentials")
    if not ref:
        return None
    if not isinstance(ref, Mapping) or not (ref.get("file") or ref.get("env")):
        raise CredentialsError("sources.mirror_credentials must name a file or an env variable")
    return dict(ref)


def read(ref: Mapping[str, Any]) -> list[Login]:
    """Read and parse the credentials a reference names, on the control machine, with the one
    secret check every secret passes (servekit/secrets.py: a regular file of the user's, 0600 or
    0400, at most 64 KiB; a variable set, on one line)."""
    source = SecretSource.model_validate({"file": ref.get("file"), "env": ref.get("env")})
    try:
        lines = secrets.load_secret(source, structured=True)
    except secrets.SecretError as error:
        detail = f"{error.message}: {error.fix}" if error.fix else error.message
        raise CredentialsError(f"mirror credentials: {detail}") from None
    origin = (
        f"environment variable {source.env}"
        if source.env
        else f"file {Path(str(source.file)).expanduser()}"
    )
    return parse_netrc("\n".join(lines), origin)
