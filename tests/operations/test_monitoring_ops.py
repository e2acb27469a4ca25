"""deploys/monitoring.py through pyinfra with the monitoring host simulated by pyinfra's `@fake`
connector (facts answer as `dpkg -l`, `stat`, `sha256sum` and `systemctl show` print): a fresh
host gets the packages, files and services; a converged one gets no command; a changed
configuration reloads, changed flags restart; the webhook never appears in a command line.
The staged swap itself runs against Debian's real promtool and amtool (refused files roll back).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from monitoring_fleet import team_fleet
from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import StringCommand
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from servekit.deploys.monitoring import monitoring_host
from servekit.hostplan import HOST_DATA_KEY, HostPlan
from servekit.monitoring import MONITORING, MonitoringLayout, monitoring_files
from servekit.monitoring.exporters import exporter_files
from servekit.operations.exporters import NODE_EXPORTER_PACKAGE
from servekit.operations.monitoring import PACKAGES, check_command, swap_and_check_command
from servekit.operations.staged import KEPT, STAGED
from servekit.placement import plan_fleet
from servekit.spec import SecretRef

HOOK = "https://hooks.example.com/services/zq-secret-hook"


@dataclass
class Run:
    steps: dict[str, list[str]]
    changed: list[str]
    failed: bool
    executed: list[str]


def plan_data(**monitoring: Any) -> dict[str, Any]:
    return plan_fleet(team_fleet(**monitoring)).hosts["mon"].to_host_data()


def run_deploy(data: dict[str, Any], responses: dict[Any, Any]) -> Run:
    inventory = Inventory(
        (
            [
                (
                    "@fake/mon",
                    {
                        HOST_DATA_KEY: data,
                        "fake_responses": responses,
                        "fake_delay": 0,
                        "fake_delay_jitter": 0,
                    },
                )
            ],
            {},
        )
    )
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    add_deploy(state, monitoring_host)
    with contextlib.suppress(PyinfraError):
        run_ops(state)
    (host,) = list(inventory)
    steps, changed = {}, []
    for op_hash in state.get_op_order():
        if op_hash not in state.ops[host]:
            continue
        meta = state.ops[host][op_hash].operation_meta
        name = ", ".join(state.op_meta[op_hash].names).removeprefix("servekit monitoring | ")
        commands = [c for c in meta._commands or [] if isinstance(c, StringCommand)]
        steps[name] = [c.get_raw_value() for c in commands]
        if meta.is_complete() and meta.did_change():
            changed.append(name)
    executed = list(host.connector.executed_commands)
    disconnect_all(state)
    return Run(steps, changed, host in state.failed_hosts, executed)


def stat_line(path: str, kind: str, mode: str, group: str) -> str:
    return (
        f"user=root group={group} mode={kind}{mode} atime=1790000000 mtime=1790000000 "
        f"ctime=1790000000 size=100 '{path}'"
    )


def host_answers(
    *,
    installed: bool = True,
    running: bool = True,
    files: dict[str, str] | None = None,
) -> dict[Any, Any]:
    """What the host prints: packages, the files (path -> content) with their owners, units."""
    services = (
        "prometheus",
        "prometheus-alertmanager",
        "prometheus-blackbox-exporter",
        "prometheus-node-exporter",
    )
    units = [f"{service}.service" for service in services]
    sub, enabled = ("running", "enabled") if running else ("dead", "disabled")
    packages = [*PACKAGES, NODE_EXPORTER_PACKAGE]
    responses: dict[Any, Any] = {
        re.compile(r">&2 && false$"): {"success": False},  # a step that stops the host
        re.compile(r"test -e '?/run/systemd/system"): stat_line(
            "/run/systemd/system", "d", "rwxr-xr-x", "root"
        ),
        "dpkg -l": [f"ii  {p}  1.0-1  amd64  x" for p in packages] if installed else [],
        "SubState": [line for u in units for line in (f"Id={u}", f"SubState={sub}", "")],
        "UnitFileState": [
            line for u in units for line in (f"Id={u}", f"UnitFileState={enabled}", "")
        ],
    }
    if installed:
        directory = MONITORING.rules_directory
        responses[re.compile(rf"test -e '?{re.escape(directory)}'? ")] = stat_line(
            directory, "d", "rwxr-x---", "prometheus"
        )
    rendered = {f.path: f for f in all_files(plan_data())}
    for path, content in (files or {}).items():
        quoted = re.escape(path) + r"'?(?![\w/.-])"
        digest = hashlib.sha256(content.encode()).hexdigest()
        responses[re.compile(rf"^test -e '?{quoted} && \( sha256sum")] = f"{digest}  {path}"
        mode = "rw-r-----" if rendered[path].mode == "0640" else "rw-r--r--"
        responses[re.compile(rf"test -e '?{quoted}")] = stat_line(
            path, "-", mode, rendered[path].group
        )
    return responses


def all_files(data: dict[str, Any]) -> list[Any]:
    """The monitoring host's files: Prometheus's side and its own exporter's."""
    plan = HostPlan.from_host_data(data)
    return [*monitoring_files(plan, None), *exporter_files(plan)]


def converged(data: dict[str, Any]) -> dict[str, str]:
    return {f.path: f.content for f in all_files(data)}


def test_a_fresh_host_gets_packages_files_and_services_then_a_restart() -> None:
    run = run_deploy(plan_data(), host_answers(installed=False, running=False))
    assert not run.failed, run
    (install,) = run.steps["Install Prometheus, Alertmanager and the blackbox exporter"]
    assert all(p in install for p in PACKAGES) and "--no-install-recommends" in install
    (node,) = run.steps["Install the node exporter"]
    assert NODE_EXPORTER_PACKAGE in node
    config = run.steps["Write the monitoring configuration"]
    assert len(config) == 5  # four files staged, then one swap checked by their own tools
    assert "promtool check config /etc/prometheus/prometheus.yml" in config[-1]
    assert "amtool check-config /etc/prometheus/alertmanager.yml" in config[-1]
    assert "--config.check --config.file=/etc/prometheus/blackbox.yml" in config[-1]
    assert len(run.steps["Write the services' arguments"]) == 4
    services = " ".join(run.steps["Enable and start Prometheus, Alertmanager, blackbox exporter"])
    for unit in ("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter"):
        assert f"systemctl enable {unit}.service" in services
    node_start = " ".join(run.steps["Enable and start the node exporter"])
    assert "systemctl enable prometheus-node-exporter.service" in node_start
    assert "Restart the exporters after new files" in run.changed
    assert "Restart after new arguments" in run.changed
    assert "Reload Prometheus and Alertmanager" not in run.changed


def test_a_converged_host_gets_no_command() -> None:
    data = plan_data()
    run = run_deploy(data, host_answers(files=converged(data)))
    assert not run.failed, run
    assert run.changed == []
    changes = ("systemctl enable", "systemctl start", "systemctl re", "apt-get", "mv -f")
    assert not any(word in command for command in run.executed for word in changes)


def test_a_new_configuration_is_reloaded_not_restarted() -> None:
    data = plan_data()
    files = converged(data)
    files[MONITORING.rules_file] = "groups: []\n"  # the host has older rules
    run = run_deploy(data, host_answers(files=files))
    assert not run.failed, run
    reload = "Reload Prometheus and Alertmanager"
    assert run.changed == ["Write the monitoring configuration", reload]
    assert run.steps["Reload Prometheus and Alertmanager"] == [
        "systemctl reload prometheus.service",
        "systemctl reload prometheus-alertmanager.service",
        "systemctl reload prometheus-blackbox-exporter.service",
    ]


def test_a_new_retention_restarts_the_services() -> None:
    old = converged(plan_data())
    run = run_deploy(plan_data(retention="30d"), host_answers(files=old))
    assert not run.failed, run
    assert run.changed == ["Write the services' arguments", "Restart after new arguments"]


def test_the_webhook_travels_on_standard_input_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_HOOK", HOOK)
    data = plan_data(alert_webhook=SecretRef(env="ALERT_HOOK"))
    run = run_deploy(data, host_answers(installed=False, running=False))
    assert not run.failed, run
    assert "Write the monitoring configuration" in run.changed
    assert not any("zq-secret-hook" in command for command in run.executed)


def test_an_unreadable_webhook_stops_the_host_before_any_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ALERT_HOOK", raising=False)
    run = run_deploy(plan_data(alert_webhook=SecretRef(env="ALERT_HOOK")), host_answers())
    assert run.failed
    assert list(run.steps) == ["Read the alert webhook"]


# --- the staged swap, against the real promtool and amtool ---------------------------------


def swap(layout: MonitoringLayout, paths: list[str]) -> subprocess.CompletedProcess[str]:
    command = swap_and_check_command(paths, check_command(layout))
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)


def staged_files(tmp_path: Path) -> tuple[MonitoringLayout, dict[str, str]]:
    layout = MonitoringLayout.under(str(tmp_path))
    rendered = monitoring_files(HostPlan.from_host_data(plan_data()), None, layout)
    Path(layout.rules_directory).mkdir()
    files = {f.path: f.content for f in rendered if "default" not in f.path}
    for path, content in files.items():
        Path(path + STAGED).write_text(content)
    return layout, files


def test_files_promtool_and_amtool_accept_replace_the_old_ones(tmp_path: Path) -> None:
    layout, files = staged_files(tmp_path)
    result = swap(layout, list(files))
    assert result.returncode == 0, result.stderr
    for path, content in files.items():
        assert Path(path).read_text() == content
    assert not any(p.name.endswith((STAGED, KEPT)) for p in tmp_path.rglob("*"))


def test_refused_rules_are_rolled_back_with_the_rest(tmp_path: Path) -> None:
    layout, files = staged_files(tmp_path)
    assert swap(layout, list(files)).returncode == 0
    good = {path: Path(path).read_text() for path in files}
    Path(layout.rules_file + STAGED).write_text("groups:\n  - name: x\n    rules: [{alert: A}]\n")
    Path(layout.alertmanager_config + STAGED).write_text("route: {receiver: other}\n")
    result = swap(layout, [layout.rules_file, layout.alertmanager_config])
    assert result.returncode != 0
    assert "the previous files are back in place" in result.stderr
    assert {path: Path(path).read_text() for path in files} == good
    assert not any(p.name.endswith((STAGED, KEPT)) for p in tmp_path.rglob("*"))
