"""Facts for the vLLM operations: the host's whole relevant state in one round trip (the driver and
GPUs come from `servekit.facts.nvidia.NvidiaGpus`).

`HostState` runs a small stdlib Python program on the host (`host_scripts/inspect_host.py`)
that reports, as JSON, what the deploy compares against: Debian packages, the service user, paths
(type, mode, owner, sha256), small marker files, command results, systemd units, `/health` probes
and the addresses of the network interfaces. One fact instead of one per file and unit keeps a
no-change run to a single command per host: the operations read it through
`servekit.operations.hoststate.view`, which keeps the reading for the rest of the pyinfra run
(per `State` and pass) until an operation changes the host.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.host_scripts import script

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
