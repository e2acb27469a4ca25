"""The gateway's access log and metrics steps (servekit.operations.gateway_metrics) through
pyinfra on a `@fake` host: what a bare host gets, that a converged host gets nothing (no
install, no upload, no restart), and that a changed program restarts mtail and nothing else.
Facts answer as the real commands print (`dpkg -l`, `stat`, `sha1sum`, `systemctl show`)."""

from __future__ import annotations

import contextlib
import hashlib
import re
from io import StringIO
from pathlib import Path, PurePosixPath
from typing import Any

from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy, deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from servekit.gateway import GATEWAY
from servekit.gateway.keymetrics import metrics_files
from servekit.hostplan import HostPlan
from servekit.inventory import load_fleet_and_plan
from servekit.operations.gateway_metrics import directories, metrics_steps
from servekit.templating import RenderedFile

SERVICE = f"{GATEWAY.metrics_service}.service"


def gateway_plan() -> HostPlan:
    """The gateway host of the main example (inventories/prod.py), its cloud replicas given
    addresses as `servekit cloud apply` would."""
    _fleet, plan = load_fleet_and_plan(Path(__file__).resolve().parents[2] / "inventories/prod.py")
    (host,) = [h for h in plan.hosts.values() if h.gateway is not None]
    assert host.gateway is not None
    routes = [
        route.model_copy(update={"upstreams": [f"10.0.0.{9 + i}:8000" for i, _ in
                                               enumerate(route.upstreams)]})
        for route in host.gateway.routes
    ]  # fmt: skip
    return host.model_copy(update={"gateway": host.gateway.model_copy(update={"routes": routes})})


FILES = metrics_files(gateway_plan())


def stat_line(path: str, kind: str, user: str, group: str, mode: str) -> str:
    return (
        f"user={user} group={group} mode={kind}{mode} atime=1790000000 mtime=1790000000 "
        f"ctime=1790000000 size=100 '{path}'"
    )


def rwx(mode: int) -> str:
    return "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))


def converged(files: list[RenderedFile]) -> dict[Any, Any]:
    """A host where everything is as the steps leave it, holding `files`."""
    responses: dict[Any, Any] = {
        "dpkg -l": [
            "ii  mtail   3.0.0~rc50-1+b6      amd64  extract monitoring data from logs",
            "ii  rsyslog 8.2302.0-1+deb12u1   amd64  reliable system and kernel logging daemon",
        ],
        "--property SubState": [
            line for u in ("rsyslog.service", SERVICE) for line in (f"Id={u}", "SubState=running")
        ],
        "--property UnitFileState": [
            line
            for u in ("rsyslog.service", SERVICE)
            for line in (f"Id={u}", "UnitFileState=enabled")
        ],
    }
    made = {path for path, *_ in directories(GATEWAY)}
    parents = {str(PurePosixPath(f.path).parent) for f in files} - made  # /etc/rsyslog.d, ...
    for path, mode, user, group in [
        *directories(GATEWAY),
        *((p, 0o755, "root", "root") for p in sorted(parents)),
    ]:
        responses[re.compile(rf"test -e '?{re.escape(path)}'? ")] = stat_line(
            path, "d", user, group, rwx(mode)
        )
    for file in files:
        quoted = re.escape(file.path) + r"'?(?![\w/.-])"
        digest = hashlib.sha1(file.content.encode()).hexdigest()
        responses[re.compile(rf"^test -e '?{quoted} && \( sha1sum")] = f"{digest}  {file.path}"
        responses[re.compile(rf"test -e '?{quoted}")] = stat_line(
            file.path, "-", file.user, file.group, rwx(int(file.mode, 8))
        )
    return responses


def run(responses: dict[Any, Any]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The steps on one `@fake` host: the shell commands of each step that changed it, and the
    files uploaded."""

    @deploy("gateway metrics")
    def steps() -> None:
        metrics_steps(FILES)

    data = {"fake_responses": responses, "fake_delay": 0, "fake_delay_jitter": 0}
    inventory = Inventory(([("@fake/gw", data)], {}))
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    add_deploy(state, steps)
    with contextlib.suppress(PyinfraError):
        run_ops(state)
    (host,) = list(inventory)
    changed: dict[str, list[str]] = {}
    uploads: dict[str, str] = {}
    for op_hash in state.get_op_order():
        meta = state.ops[host][op_hash].operation_meta
        commands = list(meta._commands or [])
        for command in commands:
            if isinstance(command, FileUploadCommand) and isinstance(command.src, StringIO):
                uploads[command.dest] = command.src.getvalue()
        if meta.is_complete() and meta.did_change():
            name = ", ".join(state.op_meta[op_hash].names).removeprefix("gateway metrics | ")
            changed[name] = [c.get_raw_value() for c in commands if isinstance(c, StringCommand)]
    assert host not in state.failed_hosts
    disconnect_all(state)
    return changed, uploads


def test_a_bare_host_gets_packages_directories_files_and_running_services() -> None:
    changed, uploads = run({})
    commands = [c for step in changed.values() for c in step]
    (install,) = changed["Install mtail and rsyslog"]
    assert install.endswith("apt-get install -y -q --no-install-recommends mtail rsyslog")
    made = changed["Create the access log's directories"]
    assert made == [
        "install -d -m 0750 -o root -g mtail /var/log/servekit-gateway",
        "install -d -m 0755 -o root -g root /etc/servekit/gateway-metrics",
    ]
    assert uploads == {file.path: file.content for file in FILES}
    assert "rsyslogd -N1 -f /etc/rsyslog.conf && systemctl restart rsyslog.service" in commands
    assert "systemctl daemon-reload" in commands
    assert f"systemctl enable {SERVICE}" in commands and f"systemctl start {SERVICE}" in commands
    assert f"systemctl restart {SERVICE}" not in commands  # it started with these files


def test_a_converged_host_gets_nothing() -> None:
    changed, uploads = run(converged(FILES))
    assert changed == {} and uploads == {}


def test_a_changed_program_restarts_mtail_only() -> None:
    old = [
        RenderedFile(f.path, f.content.replace("0.05, ", ""), f.mode)
        if f.path.endswith(".mtail")
        else f
        for f in FILES
    ]
    changed, uploads = run(converged(old))
    assert list(uploads) == [GATEWAY.metrics_program]
    assert list(changed) == [
        f"Write {GATEWAY.metrics_program}",
        f"Restart {SERVICE} (its program or unit changed)",
    ]
    assert changed[f"Restart {SERVICE} (its program or unit changed)"] == [
        f"systemctl restart {SERVICE}"
    ]
