"""Facts for the vLLM deploy: the host's whole relevant state in one round trip, and the driver.

`HostState` runs a small stdlib Python program on the host (`host_scripts/inspect_host.py`)
that reports, as JSON, what the deploy compares against: Debian packages, the service user, paths
(type, mode, owner, sha256), small marker files, command results, systemd units, `/health` probes
and the addresses of the network interfaces. One fact instead of one per file and unit keeps a
no-change run to a single command per host.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.deploys.host_scripts import script

NO_PYTHON = '{"python": null}'


class HostState(FactBase[dict[str, Any]]):
    """What `inspect_host.py` reports for `spec` (a JSON object; see that program)."""

    @override
    def command(self, spec: str) -> StringCommand:
        return StringCommand(
            "if command -v python3 >/dev/null 2>&1; then python3 -c",
            QuoteString(script("inspect_host")),
            QuoteString(spec),
            f"; else echo '{NO_PYTHON}'; fi",
        )

    @staticmethod
    @override
    def default() -> dict[str, Any]:
        return {"python": None}

    @override
    def process(self, output: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = json.loads("\n".join(output))
        return result


class GpuDriver(FactBase[dict[str, Any]]):
    """The NVIDIA driver version and GPU names as `nvidia-smi` reports them.

    `{"state": "ok", "driver": "580.95.05", "gpus": ["NVIDIA A100-SXM4-80GB", ...]}`, or state
    `missing` (no nvidia-smi) / `error` (it failed: no driver loaded, a version mismatch) with its
    message. (The GPU deploy's facts give more detail; this is all vLLM's install needs.)
    """

    @override
    def command(self) -> str:
        return (
            "if command -v nvidia-smi >/dev/null 2>&1; then "
            "nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader 2>&1; "
            'echo "servekit-status=$?"; else echo servekit-status=missing; fi'
        )

    @staticmethod
    @override
    def default() -> dict[str, Any]:
        return {"state": "missing", "driver": None, "gpus": [], "message": "no nvidia-smi"}

    @override
    def process(self, output: list[str]) -> dict[str, Any]:
        status = output[-1].removeprefix("servekit-status=") if output else "missing"
        lines = [line.strip() for line in output[:-1] if line.strip()]
        if status == "missing":
            return self.default()
        rows = [[cell.strip() for cell in line.split(",")] for line in lines]
        if status != "0" or not rows or any(len(row) != 3 for row in rows):
            return {"state": "error", "driver": None, "gpus": [], "message": " ".join(lines)}
        return {
            "state": "ok",
            "driver": rows[0][2],
            "gpus": [row[1] for row in rows],
            "message": None,
        }
