"""Debian packages for servekit's steps: one way to install what is missing (apt lists
refreshed first, no recommends, no prompts)."""

from __future__ import annotations

from collections.abc import Iterable

from pyinfra.context import host
from pyinfra.facts.deb import DebPackages

from servekit.operations.common import Commands
from servekit.operations.hoststate import announce


def apt_install_command(packages: Iterable[str]) -> str:
    """Shell: refresh apt's lists, then install `packages` without recommends or prompts."""
    return (
        "export DEBIAN_FRONTEND=noninteractive && apt-get update -q && "
        f"apt-get install -y -q --no-install-recommends {' '.join(packages)}"
    )


def install_missing(packages: tuple[str, ...]) -> Commands:
    """Commands installing those of Debian's `packages` that are not installed (pyinfra's
    `DebPackages` fact); a no-op, said so, when all are."""
    installed = host.get_fact(DebPackages) or {}
    missing = [p for p in packages if p not in installed]
    if not missing:
        host.noop(f"{', '.join(packages)} are installed")
        return
    announce(*(f"install the Debian package {p}" for p in missing))
    yield apt_install_command(missing)
