"""Configuration files that must pass their program's own check before they count (HAProxy's,
Prometheus's): each new file is staged beside the old one (its content on standard input, never
shown), all are moved in together and checked, and the previous files come back if the check
fails. The gateway and monitoring operations use it."""

from __future__ import annotations

import hashlib
from collections.abc import Generator

from pyinfra.api.command import StringCommand
from pyinfra.context import host
from pyinfra.facts.files import File, Sha256File

from servekit.operations.hoststate import announce
from servekit.shell import quote as q
from servekit.templating import RenderedFile

STAGED = ".servekit-new"
"""Suffix of a file written but not yet in place."""
KEPT = ".servekit-old"
"""Suffix of the previous file while the new configuration is checked."""


def file_differs(rendered: RenderedFile) -> bool:
    """Whether the host's file differs from `rendered` (content, mode or owner)."""
    current = host.get_fact(File, path=rendered.path)
    if not current:
        return True
    if (current.get("mode"), current.get("user"), current.get("group")) != (
        int(rendered.mode.lstrip("0") or "0"),
        rendered.user,
        rendered.group,
    ):
        return True
    digest = hashlib.sha256(rendered.content.encode()).hexdigest()
    return bool(host.get_fact(Sha256File, path=rendered.path) != digest)


def stage_command(rendered: RenderedFile) -> str:
    """Shell: standard input into `PATH.servekit-new` with the file's mode and owner, never
    readable beyond them (umask 077 until chmod)."""
    staged = rendered.path + STAGED
    return (
        f"umask 077 && cat > {q(staged)} && chown {q(rendered.user)}:{q(rendered.group)} "
        f"{q(staged)} && chmod {q(rendered.mode)} {q(staged)}"
    )


def stage_changed(
    files: list[RenderedFile], what: str
) -> Generator[StringCommand, None, list[str]]:
    """Commands staging each of `files` that differs from the host's (announced, contents on
    standard input); returns the staged paths (`changed = yield from stage_changed(...)`), none
    with a no-op said for `what` ("Grafana's") when every file is written."""
    changed = [f for f in files if file_differs(f)]
    if not changed:
        host.noop(f"{what} {len(files)} files are written")
        return []
    announce(*(f"write {f.path} ({f.mode} {f.user}:{f.group}; content not shown)" for f in changed))
    for rendered in changed:
        yield StringCommand(stage_command(rendered), _stdin=rendered.content)
    return [f.path for f in changed]


def swap_and_check(paths: list[str], check: str, explain: str) -> str:
    """Shell: keep each current file as `PATH.servekit-old`, move the staged ones in, run
    `check`; on success drop the kept files, else run `explain` (the new files still in place;
    it prints why to stderr), put the previous files back (a file new in this run is removed)
    and fail."""
    keep = " && ".join(
        f"{{ if [ -e {q(p)} ]; then cp -p {q(p)} {q(p + KEPT)}; else rm -f {q(p + KEPT)}; fi; }}"
        for p in paths
    )
    move = " && ".join(f"mv -f {q(p + STAGED)} {q(p)}" for p in paths)
    drop = " ".join(q(p + KEPT) for p in paths)
    restore = "; ".join(
        f"if [ -e {q(p + KEPT)} ]; then mv -f {q(p + KEPT)} {q(p)}; else rm -f {q(p)}; fi"
        for p in paths
    )
    return (
        f"{keep} && {move} && if {check}; then rm -f {drop}; else {explain}; {restore}; false; fi"
    )
