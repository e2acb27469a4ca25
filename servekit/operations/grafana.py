"""Grafana on the monitoring host, in named steps: Grafana's apt source and key, the package,
servekit's folders, grafana.ini + the admin password + provisioning + dashboard (contents on
standard input, never shown), `grafana-server.service` enabled and running, and a restart only
after a file changed (Grafana reads grafana.ini and the data sources at start).

`grafana_server(plan)` runs them all for a monitoring host whose plan names Grafana (the
monitoring deploy calls it last; an unreadable password or key stops the host before Grafana
changes). Files: `servekit.monitoring.grafana`.
"""

from __future__ import annotations

from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import Directory

from servekit import secrets
from servekit.hostplan import HostPlan
from servekit.monitoring.grafana import (
    GRAFANA,
    grafana_apt_files,
    grafana_config_files,
    read_signing_key,
)
from servekit.operations.common import Commands, problem
from servekit.operations.debian import install_missing
from servekit.operations.hoststate import announce
from servekit.operations.services import enable_and_start
from servekit.operations.staged import STAGED, stage_changed
from servekit.secrets import SecretError
from servekit.shell import quote as q
from servekit.templating import RenderedFile


@operation()
def grafana_files(files: list[RenderedFile]) -> Commands:
    """
    Write Grafana's files where they differ: each staged beside its place with its mode and
    owner, then moved in. Contents travel on standard input and are never shown.

    + files: rendered files (`servekit.monitoring.grafana`)

    **Example:**

    .. code:: python

        config = grafana_files(name="Write Grafana's configuration", files=files)
    """
    changed = yield from stage_changed(files, "Grafana's")
    for path in changed:
        yield f"mv -f {q(path + STAGED)} {q(path)}"


@operation()
def keyring_directory() -> Commands:
    """
    Create apt's folder for repository keys (/etc/apt/keyrings, 0755 root:root) where the
    release does not ship it.

    **Example:**

    .. code:: python

        keyring_directory(name="Create /etc/apt/keyrings")
    """
    path = GRAFANA.keyring.rsplit("/", 1)[0]
    if host.get_fact(Directory, path=path):
        host.noop(f"{path} exists")
        return
    announce(f"create {path} (0755 root:root)")
    yield f"install -d -m 0755 {q(path)}"


@operation()
def grafana_package(package: str) -> Commands:
    """
    Install Grafana's package from the repository just written (apt lists refreshed first),
    unless it is installed.

    + package: `grafana` or `grafana-enterprise`

    **Example:**

    .. code:: python

        grafana_package(name="Install Grafana", package="grafana")
    """
    yield from install_missing((package,))


@operation()
def grafana_directories() -> Commands:
    """
    Create the provisioning and dashboard folders: 0755 root:grafana, as the package makes
    /etc/grafana's own.

    **Example:**

    .. code:: python

        grafana_directories(name="Create Grafana's folders")
    """
    group = GRAFANA.group
    missing = []
    for path in GRAFANA.directories():
        info = host.get_fact(Directory, path=path)
        if not info or (info.get("user"), info.get("group"), info.get("mode")) != (
            "root",
            group,
            755,
        ):
            missing.append(path)
    if not missing:
        host.noop("Grafana's folders exist (0755 root:grafana)")
        return
    announce(*(f"create {path} (0755 root:{group})" for path in missing))
    for path in missing:
        yield f"install -d -m 0755 -o root -g {q(group)} {q(path)}"


@operation()
def grafana_service() -> Commands:
    """
    Enable and start `grafana-server.service` (nothing when it is enabled and running).

    **Example:**

    .. code:: python

        grafana_service(name="Enable and start Grafana")
    """
    yield from enable_and_start([f"{GRAFANA.service}.service"])


@operation(is_idempotent=False)
def grafana_restart() -> Commands:
    """
    Restart Grafana after its files changed: grafana.ini and the data sources are read at start.
    Call it with `_if=` the files step's change.

    **Example:**

    .. code:: python

        grafana_restart(name="Restart Grafana", _if=config.did_change)
    """
    yield f"systemctl restart {q(GRAFANA.service + '.service')}"


def read_inputs(plan: HostPlan) -> tuple[str, str] | None:
    """(admin password, repository key) read on the control machine; None after stopping this
    host with why (never the password)."""
    assert plan.monitoring is not None and plan.monitoring.grafana is not None
    grafana = plan.monitoring.grafana
    try:
        password = secrets.read_secret(grafana.admin_password)
    except SecretError as error:
        problem(name="Read Grafana's admin password", message=str(error))
        return None
    try:
        key = read_signing_key(grafana)
    except ValueError as error:
        problem(name="Read Grafana's repository key", message=str(error))
        return None
    return password, key


def grafana_server(plan: HostPlan) -> bool:
    """Every Grafana step on the monitoring host (nothing when its plan names no Grafana).
    False after stopping this host (its password or key could not be read) before Grafana
    changes."""
    if plan.monitoring is None or plan.monitoring.grafana is None:
        return True
    inputs = read_inputs(plan)
    if inputs is None:
        return False
    password, key = inputs
    keyring_directory(name="Create apt's keyring folder")
    grafana_files(name="Write Grafana's apt source", files=grafana_apt_files(plan, key))
    grafana_package(name="Install Grafana", package=plan.monitoring.grafana.package)
    grafana_directories(name="Create Grafana's folders")
    config = grafana_files(
        name="Write Grafana's configuration", files=grafana_config_files(plan, password)
    )
    grafana_service(name="Enable and start Grafana")
    grafana_restart(name="Restart Grafana after new files", _if=config.did_change)
    return True
