"""Facts `servekit doctor` reads about a host's network: its interfaces, its clock, whether it
reaches its peers' cluster ports, the EFA pieces NCCL needs, and the torch of the vLLM venv.

Each fact's `process` turns the raw output (recorded in tests/data/doctor_network/) into plain
data; the verdicts are `servekit.doctor.network`'s. pyinfra hands a fact whose command printed
nothing its `default()`: every fact here has one, so no check ever sees None.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, TypedDict

from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.facts.probe import split_status
from servekit.hostplan import ip_literal
from servekit.shell import quote as q
from servekit.vllm_files import EFA_LIBRARY_PATH

CONNECT_TIMEOUT_S = 3


class Interface(TypedDict):
    name: str
    mtu: int
    up: bool
    addresses: list[str]


class Interfaces(FactBase[list[Interface]]):
    """The host's network interfaces with MTU and addresses (`ip -j addr`, iproute2's JSON)."""

    @override
    def command(self) -> str:
        return "ip -j addr show 2>/dev/null || echo '[]'"

    @staticmethod
    @override
    def default() -> list[Interface]:
        return []

    @override
    def process(self, output: list[str]) -> list[Interface]:
        return parse_interfaces("\n".join(output))


def parse_interfaces(text: str) -> list[Interface]:
    """`ip -j addr` output -> interfaces; an interface is up when its flags say UP."""
    found: list[Interface] = []
    for link in json.loads(text or "[]"):
        addresses = [str(a["local"]) for a in link.get("addr_info", []) if "local" in a]
        found.append(
            {
                "name": str(link.get("ifname", "")),
                "mtu": int(link.get("mtu", 0)),
                "up": "UP" in link.get("flags", []),
                "addresses": addresses,
            }
        )
    return found


class Clock(TypedDict):
    epoch: float | None
    ntp_synchronized: bool | None


class ClockReading(FactBase[Clock]):
    """The host's time (`date +%s.%N`) and whether systemd-timesyncd/chrony say it is synced
    (`timedatectl show -p NTPSynchronized --value`: yes/no; no systemd: unknown)."""

    @override
    def command(self) -> str:
        return (
            "date +%s.%N; timedatectl show -p NTPSynchronized --value 2>/dev/null || echo unknown"
        )

    @staticmethod
    @override
    def default() -> Clock:
        return {"epoch": None, "ntp_synchronized": None}

    @override
    def process(self, output: list[str]) -> Clock:
        return parse_clock(output)


def parse_clock(output: list[str]) -> Clock:
    epoch: float | None = None
    if output and re.fullmatch(r"\d+(\.\d+)?", output[0].strip()):
        epoch = float(output[0].strip())
    synced = output[1].strip() if len(output) > 1 else "unknown"
    return {"epoch": epoch, "ntp_synchronized": {"yes": True, "no": False}.get(synced)}


class PortReach(FactBase[dict[str, str]]):
    """Whether this host opens a TCP connection to each `address:port` (bash's /dev/tcp, so no
    nc or curl is needed): `open`, `refused` (the host answered, nothing listens), `timeout`
    (dropped on the way: a firewall) or another error such as `no route to host`."""

    @override
    def command(self, targets: list[tuple[str, int]]) -> str:
        parts = ["true"]
        for address, port in targets:
            address = ip_literal(address)  # one IP literal: it is parsed by the inner shell
            connect = f"exec 3<>/dev/tcp/{address}/{int(port)}"
            parts.append(
                f"e=$(timeout {CONNECT_TIMEOUT_S} bash -c {q(connect)} 2>&1); s=$?; "
                f'echo {q(f"{address} {int(port)}")} "$s" "$e" | head -n 1'
            )
        return "; ".join(parts)

    @staticmethod
    @override
    def default() -> dict[str, str]:
        return {}

    @override
    def process(self, output: list[str]) -> dict[str, str]:
        return parse_port_reach(output)


def parse_port_reach(output: list[str]) -> dict[str, str]:
    """Lines `ADDRESS PORT STATUS ERROR...` -> {"ADDRESS:PORT": open|refused|timeout|error}."""
    result: dict[str, str] = {}
    for line in output:
        fields = line.split(" ", 3)
        if len(fields) < 3:
            continue
        address, port, status = fields[:3]
        error = fields[3].lower() if len(fields) > 3 else ""
        if status == "0":
            outcome = "open"
        elif status == "124":
            outcome = "timeout"
        elif "refused" in error:
            outcome = "refused"
        else:
            outcome = error.rsplit(": ", 1)[-1].strip() or f"exit {status}"
        result[f"{address}:{port}"] = outcome
    return result


# Where the aws-ofi-nccl plugin lives: the directories the engine units' LD_LIBRARY_PATH names on
# EFA hosts (servekit.vllm_files.EFA_LIBRARY_PATH, sources there), and a source build's default
# prefix /opt/aws-ofi-nccl (gist.github.com/sean-smith/18e4832ba7b3d38c29cab95d09dd1355).
PLUGIN_GLOBS = tuple(
    f"{directory}/libnccl-net*.so"
    for directory in (*EFA_LIBRARY_PATH.split(":"), "/opt/aws-ofi-nccl/lib")
    if not directory.endswith("/efa/lib")
)
# IMDSv2: a PUT for a session token, then the instance type (docs.aws.amazon.com/AWSEC2/latest/
# UserGuide/instancedata-data-retrieval.html).
IMDS = "http://169.254.169.254/latest"


class EfaFacts(TypedDict):
    instance_type: str | None
    devices: dict[str, str]
    plugins: list[str]
    ld_cache: list[str]


class EfaState(FactBase[EfaFacts]):
    """What decides whether NCCL uses EFA: the instance type (IMDSv2, only when `ask_imds`), the
    RDMA devices and their drivers (/sys/class/infiniband), the aws-ofi-nccl plugin files and
    what the dynamic linker's cache knows of `libnccl-net`."""

    @override
    def command(self, ask_imds: bool = False) -> str:
        imds = ""
        if ask_imds:
            imds = (
                "if command -v curl >/dev/null 2>&1; then "
                f"t=$(curl -s -m 2 -X PUT {IMDS}/api/token "
                "-H 'X-aws-ec2-metadata-token-ttl-seconds: 60'); "
                f'echo "type=$(curl -s -m 2 -H "X-aws-ec2-metadata-token: $t" '
                f'{IMDS}/meta-data/instance-type)"; fi; '
            )
        return (
            f'{imds}for d in /sys/class/infiniband/*; do [ -e "$d" ] || continue; '
            'echo "device=${d##*/} $(basename "$(readlink -f "$d/device/driver")")"; done; '
            f'for p in {" ".join(PLUGIN_GLOBS)}; do [ -e "$p" ] && echo "plugin=$p"; done; '
            "ldconfig -p 2>/dev/null | awk '/libnccl-net/ {print \"ld=\" $NF}'; true"
        )

    @staticmethod
    @override
    def default() -> EfaFacts:
        return {"instance_type": None, "devices": {}, "plugins": [], "ld_cache": []}

    @override
    def process(self, output: list[str]) -> EfaFacts:
        return parse_efa(output)


def parse_efa(output: list[str]) -> EfaFacts:
    facts = EfaState.default()
    for line in output:
        key, _sep, value = line.strip().partition("=")
        if key == "type" and re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+", value):
            facts["instance_type"] = value
        elif key == "device" and value:
            name, _space, driver = value.partition(" ")
            facts["devices"][name] = driver
        elif key == "plugin":
            facts["plugins"].append(value)
        elif key == "ld":
            facts["ld_cache"].append(value)
    return facts


class TorchFacts(TypedDict):
    version: str | None
    cuda: bool
    error: str


class VenvTorch(FactBase[TorchFacts]):
    """Whether the vLLM venv's python imports torch, its version and whether CUDA works."""

    @override
    def command(self, python: str) -> str:
        code = "import torch; print(torch.__version__); print(torch.cuda.is_available())"
        return (
            f"if [ -x {q(python)} ]; then {q(python)} -c {q(code)} 2>&1 | tail -n 2; "
            f'echo "servekit-status=$?"; else echo "servekit-status=missing"; fi'
        )

    @staticmethod
    @override
    def default() -> TorchFacts:
        return {"version": None, "cuda": False, "error": "no output"}

    @override
    def process(self, output: list[str]) -> TorchFacts:
        return parse_torch(output)


def parse_torch(output: list[str]) -> TorchFacts:
    lines, status = split_status(output)
    if status == "missing":
        return {"version": None, "cuda": False, "error": "no such python"}
    if len(lines) == 2 and lines[1].strip() in ("True", "False"):
        return {"version": lines[0].strip(), "cuda": lines[1].strip() == "True", "error": ""}
    return {"version": None, "cuda": False, "error": (lines[-1] if lines else "").strip()}


class UnitEnvironment(FactBase[dict[str, str] | None]):
    """A unit's `Environment=` values as systemd loaded them (`systemctl show`); None when the
    unit is not installed (before a deploy)."""

    @override
    def command(self, unit: str) -> str:
        return f"systemctl show -p LoadState -p Environment {q(unit)} 2>/dev/null || true"

    @override
    def process(self, output: list[str]) -> dict[str, str] | None:
        return parse_unit_environment(output)


def parse_unit_environment(output: list[str]) -> dict[str, str] | None:
    fields = dict(line.partition("=")[::2] for line in output if "=" in line)
    if fields.get("LoadState") != "loaded":
        return None
    pairs = shlex.split(fields.get("Environment", ""))
    return dict(p.partition("=")[::2] for p in pairs if "=" in p)


class UnitActive(FactBase[bool]):
    """Whether a systemd unit is active (`systemctl is-active`); False without systemd."""

    @override
    def command(self, unit: str) -> str:
        return f"systemctl is-active {q(unit)} 2>/dev/null || true"

    @staticmethod
    @override
    def default() -> bool:
        return False

    @override
    def process(self, output: list[str]) -> bool:
        return bool(output) and output[0].strip() == "active"


class AllReduceRun(FactBase[dict[str, Any]]):
    """One node's rank of the all-reduce (host_scripts/doctor_allreduce.py) with the venv's
    python: in the foreground, its JSON result; in the background (detached, so the SSH command
    returns at once), {"started": true}."""

    @override
    def command(self, python: str, program: str, spec: str, background: bool) -> str:
        run = f"{q(python)} -c {q(program)} {q(spec)}"
        if background:
            # Nothing is written to a file: a fixed name in /tmp could be a planted symlink
            # that root would write through; the last rank reports for the replica.
            detached = f"setsid nohup {run} >/dev/null 2>&1 </dev/null &"
            return f"{detached} echo '{{\"started\": true}}'"
        return f"{run} 2>/dev/null | tail -n 1"

    @staticmethod
    @override
    def default() -> dict[str, Any]:
        return {"ok": False, "error": "no output"}

    @override
    def process(self, output: list[str]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = json.loads(output[-1]) if output else {}
        except json.JSONDecodeError:
            return {"ok": False, "error": output[-1][:300]}
        return result or {"ok": False, "error": "no output"}
