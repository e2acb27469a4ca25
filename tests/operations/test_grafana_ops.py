"""Grafana's steps (servekit.operations.grafana.grafana_server) through pyinfra, with the monitoring
host simulated by pyinfra's `@fake` connector: a fresh host gets the apt source before the
package, then the files and the service; a converged host gets no command; the admin password
never appears in a command line; a missing key or password stops the host before any change."""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from monitoring_fleet import team_fleet
from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import StringCommand
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy, deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from servekit.deploys.common import host_plan
from servekit.hostplan import HOST_DATA_KEY, HostPlan
from servekit.monitoring.grafana import GRAFANA, KEY_BEGIN, KEY_END, grafana_files
from servekit.operations.grafana import grafana_server
from servekit.placement import plan_fleet
from servekit.spec import Grafana, SecretRef

PASSWORD = "zq-grafana-admin-Secret"
KEY = f"{KEY_BEGIN}\n\nmQINBGTnhmkBEADUE4uzyLHCmWXjS6pI\n=abcd\n{KEY_END}\n"


@deploy("servekit grafana")
def grafana_deploy() -> None:
    plan = host_plan()
    assert plan is not None
    if not grafana_server(plan):
        return


def plan_data(key: Path) -> dict[str, Any]:
    grafana = Grafana(signing_key=str(key), admin_password=SecretRef(env="GRAFANA_ADMIN"))
    fleet = team_fleet(grafana=grafana)
    return plan_fleet(fleet).hosts["mon"].to_host_data()


def run(
    data: dict[str, Any], responses: dict[Any, Any]
) -> tuple[dict[str, list[str]], bool, list[str]]:
    host_entry = {HOST_DATA_KEY: data, "fake_responses": responses, "fake_delay": 0}
    inventory = Inventory(([("@fake/mon", {**host_entry, "fake_delay_jitter": 0})], {}))
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    add_deploy(state, grafana_deploy)
    with contextlib.suppress(PyinfraError):
        run_ops(state)
    (host,) = list(inventory)
    steps = {}
    for op_hash in state.get_op_order():
        if op_hash in state.ops[host]:
            meta = state.ops[host][op_hash].operation_meta
            name = ", ".join(state.op_meta[op_hash].names).removeprefix("servekit grafana | ")
            commands = [c for c in meta._commands or [] if isinstance(c, StringCommand)]
            steps[name] = [c.get_raw_value() for c in commands]
    executed = list(host.connector.executed_commands)
    disconnect_all(state)
    return steps, host in state.failed_hosts, executed


def stat_line(path: str, kind: str, mode: str, group: str) -> str:
    return (
        f"user=root group={group} mode={kind}{mode} atime=1790000000 mtime=1790000000 "
        f"ctime=1790000000 size=100 '{path}'"
    )


def answers(data: dict[str, Any] | None = None) -> dict[Any, Any]:
    """A fresh host, or (with `data`) one where Grafana is installed, written and running."""
    unit = "grafana-server.service"
    responses: dict[Any, Any] = {re.compile(r">&2 && false$"): {"success": False}}
    if data is None:
        return responses
    responses["dpkg -l"] = ["ii  grafana  12.3.0  amd64  x"]
    responses["SubState"] = [f"Id={unit}", "SubState=running", ""]
    responses["UnitFileState"] = [f"Id={unit}", "UnitFileState=enabled", ""]
    for directory in (*GRAFANA.directories(), "/etc/apt/keyrings"):
        pattern = re.compile(rf"test -e '?{re.escape(directory)}'? ")
        responses[pattern] = stat_line(directory, "d", "rwxr-xr-x", "grafana")
    for file in grafana_files(HostPlan.from_host_data(data), PASSWORD, KEY):
        quoted = re.escape(file.path) + r"'?(?![\w/.-])"
        digest = hashlib.sha256(file.content.encode()).hexdigest()
        responses[re.compile(rf"^test -e '?{quoted} && \( sha256sum")] = f"{digest}  {file.path}"
        mode = "rw-r-----" if file.mode == "0640" else "rw-r--r--"
        responses[re.compile(rf"test -e '?{quoted}")] = stat_line(file.path, "-", mode, file.group)
    return responses


@pytest.fixture
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRAFANA_ADMIN", PASSWORD)
    path = tmp_path / "grafana.asc"
    path.write_text(KEY)
    return path


def test_a_fresh_host_gets_the_source_then_grafana_then_its_files(key: Path) -> None:
    steps, failed, executed = run(plan_data(key), answers())
    assert not failed, steps
    assert list(steps) == [
        "Create apt's keyring folder",
        "Write Grafana's apt source",
        "Install Grafana",
        "Create Grafana's folders",
        "Write Grafana's configuration",
        "Enable and start Grafana",
        "Restart Grafana after new files",
    ]
    source = " ".join(steps["Write Grafana's apt source"])
    assert f"mv -f {GRAFANA.apt_source}.servekit-new {GRAFANA.apt_source}" in source
    (install,) = steps["Install Grafana"]
    assert install.endswith("apt-get install -y -q --no-install-recommends grafana")
    config = " ".join(steps["Write Grafana's configuration"])
    assert f"chown root:grafana {GRAFANA.password_file}.servekit-new" in config
    assert "chmod 0640" in config
    assert "systemctl enable grafana-server.service" in steps["Enable and start Grafana"]
    assert not any(PASSWORD in command for command in executed)


def test_a_converged_host_gets_no_command(key: Path) -> None:
    data = plan_data(key)
    steps, failed, executed = run(data, answers(data))
    assert not failed, steps
    changes = (
        "systemctl enable",
        "systemctl start",
        "systemctl re",
        "apt-get",
        "mv -f",
        "install -d",
    )
    assert not any(word in command for command in executed for word in changes), executed


def test_a_missing_key_stops_the_host_before_any_change(key: Path) -> None:
    data = plan_data(key)
    key.unlink()
    steps, failed, executed = run(data, answers())
    assert failed
    assert list(steps) == ["Read Grafana's repository key"]
    assert not any("apt-get" in command for command in executed)


def test_a_missing_password_stops_the_host_and_names_no_value(
    key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRAFANA_ADMIN")
    steps, failed, _executed = run(plan_data(key), answers())
    assert failed
    assert list(steps) == ["Read Grafana's admin password"]
