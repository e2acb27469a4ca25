"""Run servekit's vLLM deploy through pyinfra's API on `@fake` hosts: facts answered from a given
host state and recorded `nvidia-smi` output, every command (and what it gets on standard input)
recorded. What the deploy would write is read back from `apply_files.py`'s input."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.connectors.fake import FakeConnector

from servekit.deploys.vllm import vllm_host
from servekit.hostplan import HostPlan


def smi_rows(name: str, count: int, driver: str) -> list[str]:
    """What `NvidiaGpus` reads from nvidia-smi on a host with `count` × `name` and `driver`: the
    recorded H200 host's rows (shared/fixtures/gpu-hosts), with this board's name and driver."""
    rows = [
        f"{i}, NVIDIA {name}, GPU-7bcfea96-e9e6-e75f-24f2-64518b8a6f{i:02x}, 81920, {driver}, 8.0, "
        f"00000000:{0x07 + 8 * i:02X}:00.0, Enabled, Disabled"
        for i in range(count)
    ]
    return [*rows, "servekit-status=0"]


def bare_state(python: str = "3.12.3") -> dict[str, Any]:
    """A fresh Ubuntu GPU server: python3, no packages of ours, nothing written yet."""
    return {"python": python, "packages": {}, "user": None, "paths": {}, "read": {},
            "globs": {}, "run": {"uv": [127, ""]}, "units": {}, "health": {},
            "interfaces": {}}  # fmt: skip


@dataclass
class Captured:
    """What one fake host was asked to run."""

    commands: list[str] = field(default_factory=list)
    stdins: list[str | None] = field(default_factory=list)
    failed: bool = False

    def written(self) -> dict[str, str]:
        """path -> content of every file `apply_files.py` was given."""
        files = {}
        for command, stdin in zip(self.commands, self.stdins, strict=True):
            if stdin and "apply_files" not in command and '"groups"' not in stdin:
                continue
            if stdin and '"groups"' in stdin:
                for group in json.loads(stdin)["groups"]:
                    for item in group["files"]:
                        files[item["path"]] = base64.b64decode(item["content"]).decode()
        return files

    def stdin_of(self, pattern: str) -> list[str]:
        """Standard input of the commands matching `pattern`."""
        return [i or "" for c, i in zip(self.commands, self.stdins, strict=True)
                if re.search(pattern, c)]  # fmt: skip

    def ran(self, pattern: str) -> list[str]:
        return [c for c in self.commands if re.search(pattern, c)]


class RecordingConnector(FakeConnector):
    """The `@fake` connector, also keeping each command's standard input."""

    def run_shell_command(self, command: Any, print_output: bool = False,
                          print_input: bool = False, **arguments: Any) -> Any:  # fmt: skip
        stdin = arguments.get("_stdin")
        result = super().run_shell_command(command, print_output, print_input, **arguments)
        self.host.data.get("captured").stdins.append(stdin)
        self.host.data.get("captured").commands.append(self.executed_commands[-1])
        return result


def run_vllm_deploy(
    plans: dict[str, HostPlan],
    states: dict[str, dict[str, Any]],
    smi: dict[str, list[str]],
    dry: bool = False,
) -> dict[str, Captured]:
    """Run `vllm_host()` on one fake host per plan; return what each was asked to run.

    `dry`: as `pyinfra --dry`, only the change-detection pass (operations run up to their first
    command, nothing executes) instead of `-y`'s single execution pass."""
    captured = {name: Captured() for name in plans}
    hosts = []
    for name, plan in plans.items():
        responses: dict[Any, Any] = {
            "report the state servekit": json.dumps(states[name]),
            "nvidia-smi --query-gpu=": smi[name],
            re.compile(r"&& false$"): {"success": False},  # servekit's failure() commands
        }
        hosts.append(
            (
                f"@fake/{name}",
                {
                    "servekit": plan.to_host_data(),
                    "fake_responses": responses,
                    "fake_delay": 0,
                    "fake_delay_jitter": 0,
                    "captured": captured[name],
                },
            )
        )
    inventory = Inventory((hosts, {}))
    for host in inventory:
        host.connector_cls = RecordingConnector
    # check_for_changes=False: as the CLI with -y, operations run once, at execute time
    state = State(inventory=inventory, config=Config(), check_for_changes=dry)
    connect_all(state)
    add_deploy(state, vllm_host)
    if not dry:
        try:
            run_ops(state)
        except PyinfraError as error:  # every host failed
            assert "No hosts remaining" in str(error)
    for host in inventory:
        captured[host.name.removeprefix("@fake/")].failed = host in state.failed_hosts
    disconnect_all(state)
    return captured
