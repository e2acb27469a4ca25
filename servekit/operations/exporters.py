"""The exporters on every Linux host of a fleet with monitoring, in named steps: Debian's
`prometheus-node-exporter` installed, its ARGS file (listen address, systemd collector) and, on
GPU hosts with DCGM, the drop-in and counters file of NVIDIA's `nvidia-dcgm-exporter` written,
the node exporter enabled and running, and a restart only after its files changed.

The files hold nothing secret (0644 root:root); they are staged and moved into place. The
firewall that admits only the monitoring host to their ports is loaded before them by the
deploy (`servekit.deploys.monitoring`).
"""

from __future__ import annotations

import posixpath

from pyinfra.api.command import StringCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from servekit.monitoring.layout import DCGM_EXPORTER_UNIT, MONITORING
from servekit.operations.common import Commands
from servekit.operations.debian import install_missing
from servekit.operations.hoststate import announce
from servekit.operations.services import enable_and_start
from servekit.operations.staged import STAGED, file_differs, stage_command
from servekit.shell import quote as q
from servekit.templating import RenderedFile

NODE_EXPORTER_PACKAGE = "prometheus-node-exporter"
"""Debian bookworm's node exporter 1.5 (https://packages.debian.org/bookworm/prometheus-node-exporter);
Ubuntu ships the same package in universe (1.7 in noble,
https://packages.ubuntu.com/noble/prometheus-node-exporter)."""
NODE_UNIT = f"{MONITORING.node_exporter_service}.service"
DCGM_UNIT = f"{DCGM_EXPORTER_UNIT}.service"


@operation()
def node_exporter_package() -> Commands:
    """
    Install Debian's node exporter (apt lists refreshed first), unless it is installed.

    **Example:**

    .. code:: python

        node_exporter_package(name="Install the node exporter")
    """
    yield from install_missing((NODE_EXPORTER_PACKAGE,))


@operation()
def exporter_config(files: list[RenderedFile]) -> Commands:
    """
    Write the exporters' files where they differ (their folder created, staged, moved in).

    + files: the rendered files (`servekit.monitoring.exporters.exporter_files`)

    **Example:**

    .. code:: python

        written = exporter_config(name="Write the exporters' files", files=files)
    """
    for rendered in changed_files(files, "the exporters'"):
        yield f"install -d -m 0755 {q(posixpath.dirname(rendered.path))}"
        yield StringCommand(stage_command(rendered), _stdin=rendered.content)
        yield f"mv -f {q(rendered.path + STAGED)} {q(rendered.path)}"


def changed_files(files: list[RenderedFile], whose: str) -> list[RenderedFile]:
    """The files that differ on the host, each announced (content never shown); none: a no-op,
    said so."""
    changed = [f for f in files if file_differs(f)]
    if not changed:
        host.noop(f"{whose} {len(files)} files are written")
    announce(*(f"write {f.path} ({f.mode} {f.user}:{f.group}; content not shown)" for f in changed))
    return changed


@operation()
def node_exporter_service() -> Commands:
    """
    Enable and start Debian's prometheus-node-exporter (nothing when enabled and running).

    **Example:**

    .. code:: python

        node_exporter_service(name="Enable and start the node exporter")
    """
    yield from enable_and_start([NODE_UNIT])


@operation(is_idempotent=False)
def exporters_restart(dcgm: bool) -> Commands:
    """
    Restart the node exporter after its files changed (its listen address and collectors are
    flags), and, with `dcgm`, reload systemd and restart NVIDIA's DCGM exporter when its unit
    is installed (deploys/gpu.py installs it). Call it with `_if=` the files step's change.

    + dcgm: whether this host has a DCGM exporter

    **Example:**

    .. code:: python

        exporters_restart(name="Restart the exporters", dcgm=True, _if=written.did_change)
    """
    yield "systemctl daemon-reload"
    yield f"systemctl restart {q(NODE_UNIT)}"
    if dcgm:
        yield (
            f"if systemctl cat {q(DCGM_UNIT)} >/dev/null 2>&1; then "
            f"systemctl restart {q(DCGM_UNIT)}; else echo 'servekit: {DCGM_UNIT} is not "
            "installed yet: run deploys/gpu.py (GpuSetup(dcgm=True)), then this deploy again' "
            ">&2; fi"
        )
