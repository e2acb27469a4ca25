"""Facts `servekit doctor` reads besides the GPU deploy's: GPU health from `nvidia-smi -q`
(ECC, clock event reasons), NVLink link states, Xid lines in the kernel log since boot, a
service's state, disk space under a path, memory, and a unit's open-file limit.

Each fact's parser is a plain function too, so tests feed it recorded outputs.
"""

from __future__ import annotations

import re
import shlex
from typing import TypedDict

from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.facts.probe import probe, split_status


class GpuHealth(TypedDict):
    bus_id: str
    ecc_uncorrectable: int | None
    """Volatile (since the driver loaded) uncorrectable ECC errors; None: ECC off or N/A."""
    clock_reasons: list[str]
    """Clock event (throttle) reasons nvidia-smi reports as `Active`."""


# `nvidia-smi -q` of driver 580 names this section "Clocks Event Reasons" (recorded:
# tests/data/gpu-hosts/h200-ubuntu2404/nvidia-smi-q.txt); older drivers' "Clocks Throttle Reasons"
# is read too (not in a recording here).
CLOCK_SECTIONS = ("Clocks Event Reasons", "Clocks Throttle Reasons")
ECC_SECTION = "ECC Errors"


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _ecc_line(gpu: GpuHealth, path: list[str], key: str, value: str) -> None:
    """Count a volatile uncorrectable ECC counter: driver 580 prints `DRAM Uncorrectable`, `SRAM
    Uncorrectable ...` under Volatile (recorded on the H200); the older `Double Bit` > `Total`
    layout is read too (not in a recording here)."""
    if len(path) < 2 or path[0] != ECC_SECTION or path[1] != "Volatile":
        return
    older = len(path) >= 3 and path[2] == "Double Bit" and key == "Total"
    if "Uncorrectable" in key or older:
        count = _int(value)
        if count is not None:
            gpu["ecc_uncorrectable"] = (gpu["ecc_uncorrectable"] or 0) + count


def parse_gpu_health(lines: list[str]) -> list[GpuHealth]:
    """Each GPU's ECC and clock event reasons from `nvidia-smi -q` (4 spaces per level)."""
    gpus: list[GpuHealth] = []
    path: list[str] = []
    for line in lines:
        if line.startswith("GPU "):
            gpus.append({"bus_id": line.split()[1], "ecc_uncorrectable": None, "clock_reasons": []})
            path = []
            continue
        if not gpus or not line.strip():
            continue
        level = (len(line) - len(line.lstrip(" "))) // 4 - 1
        key, colon, value = line.strip().partition(":")
        key = key.strip()
        if level < 0:
            continue
        path = path[:level]
        if not colon:
            path.append(key)
            continue
        _ecc_line(gpus[-1], path, key, value)
        if path and path[0] in CLOCK_SECTIONS and value.strip() == "Active":
            gpus[-1]["clock_reasons"].append(key)
    return gpus


class GpuHealthState(FactBase[list[GpuHealth] | None]):
    """ECC errors and clock event reasons per GPU; None when nvidia-smi cannot run."""

    @override
    def command(self) -> str:
        return probe("nvidia-smi", "nvidia-smi -q")

    @override
    def process(self, output: list[str]) -> list[GpuHealth] | None:
        lines, status = split_status(output)
        return parse_gpu_health(lines) if status == "0" else None


class NvlinkLink(TypedDict):
    gpu: str
    link: int
    state: str


def parse_nvlink(lines: list[str]) -> list[NvlinkLink]:
    """`nvidia-smi nvlink -s`: a `GPU N: NAME (UUID: ...)` line, then `Link K: 25 GB/s` or
    `Link K: <inactive>` per link; nothing at all on a GPU without NVLink (recorded on the
    single H200: empty output, rc 0)."""
    links: list[NvlinkLink] = []
    gpu = ""
    for line in lines:
        if match := re.match(r"GPU (\d+):", line.strip()):
            gpu = match.group(1)
        elif match := re.match(r"Link (\d+):\s*(.*)", line.strip()):
            links.append({"gpu": gpu, "link": int(match.group(1)), "state": match.group(2)})
    return links


class NvlinkStatus(FactBase[list[NvlinkLink] | None]):
    """NVLink links per GPU (`nvidia-smi nvlink -s`); None when nvidia-smi cannot run."""

    @override
    def command(self) -> str:
        return probe("nvidia-smi", "nvidia-smi nvlink -s")

    @override
    def process(self, output: list[str]) -> list[NvlinkLink] | None:
        lines, status = split_status(output)
        return parse_nvlink(lines) if status == "0" else None


class XidEvent(TypedDict):
    pci: str
    xid: int
    text: str


class KernelXids(TypedDict):
    source: str
    """`journal` (journalctl -k -b), `dmesg`, or `none` (neither could be read)."""
    events: list[XidEvent]


# The driver logs `NVRM: Xid (PCI:0000:2b:00): 79, GPU has fallen off the bus.`
# (github.com/NVIDIA/open-gpu-kernel-modules/issues/1151; older drivers omit `PCI:`).
XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+),\s*(.*)")
XID_SOURCE = "servekit-xid-source="


def parse_xids(lines: list[str]) -> KernelXids:
    source = "none"
    events: list[XidEvent] = []
    for line in lines:
        if line.startswith(XID_SOURCE):
            source = line.removeprefix(XID_SOURCE).strip()
        elif match := XID_LINE.search(line):
            pci, xid, text = match.groups()
            events.append({"pci": pci, "xid": int(xid), "text": text.strip()})
    return {"source": source, "events": events}


class KernelXidLog(FactBase[KernelXids]):
    """NVIDIA Xid lines in the kernel log since this boot: the journal's (`journalctl -k -b`),
    else the ring buffer's (`dmesg`, which may have wrapped)."""

    @override
    def command(self) -> str:
        xid = "grep -a 'NVRM: Xid' | tail -n 200"
        return (
            # a booted kernel has logged something: an empty answer is no journal at all
            'if command -v journalctl >/dev/null 2>&1 && [ -n "$(journalctl -k -b -q '
            f'--no-pager -n 1 2>/dev/null)" ]; then echo {XID_SOURCE}journal; '
            f"journalctl -k -b -q --no-pager -o cat 2>/dev/null | {xid}; "
            f"elif dmesg >/dev/null 2>&1; then echo {XID_SOURCE}dmesg; dmesg | {xid}; "
            f"else echo {XID_SOURCE}none; fi; true"
        )

    @override
    def process(self, output: list[str]) -> KernelXids:
        return parse_xids(output)


class ServiceActive(FactBase[str]):
    """`systemctl is-active UNIT` (active, inactive, failed...), or `no-systemd`."""

    @override
    def command(self, unit: str) -> str:
        return (
            "if [ -d /run/systemd/system ]; then "
            f"systemctl is-active {shlex.quote(unit)} 2>/dev/null; true; else echo no-systemd; fi"
        )

    @override
    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "unknown"


class DiskUsage(TypedDict):
    mount: str
    free_bytes: int
    used_below_bytes: int
    """Bytes already under the path (`du`): weights that are there need no new space."""


def parse_disk(lines: list[str]) -> DiskUsage | None:
    """`df -Pk` of the path's nearest existing directory (its last line: device, 1024-blocks,
    used, available, capacity, mount), then `du N` (KiB under the path) when it exists."""
    df = [line.split() for line in lines if not line.startswith("du ")]
    du = [line.split() for line in lines if line.startswith("du ")]
    fields = df[-1] if df else []
    if len(fields) < 6 or not fields[3].isdigit():
        return None
    used = int(du[-1][1]) * 1024 if du and len(du[-1]) > 1 and du[-1][1].isdigit() else 0
    mount = " ".join(fields[5:])
    return {"mount": mount, "free_bytes": int(fields[3]) * 1024, "used_below_bytes": used}


class DiskSpace(FactBase[DiskUsage | None]):
    """Free space on the filesystem that holds `path` (or would: its nearest existing parent),
    and how much is already under `path`."""

    @override
    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return (
            f'p={quoted}; while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname "$p"); done; '
            'df -Pk "$p" | tail -n 1; '
            f'if [ -d {quoted} ]; then echo "du $(du -sk {quoted} 2>/dev/null | cut -f1)"; fi; '
            "true"
        )

    @override
    def process(self, output: list[str]) -> DiskUsage | None:
        return parse_disk(output)


def parse_meminfo(lines: list[str]) -> dict[str, int]:
    """/proc/meminfo in bytes (`MemTotal:  131072 kB`)."""
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return values


class MemInfo(FactBase[dict[str, int]]):
    """/proc/meminfo, in bytes."""

    @override
    def command(self) -> str:
        return "cat /proc/meminfo"

    @override
    def process(self, output: list[str]) -> dict[str, int]:
        return parse_meminfo(output)


class UnitProperties(FactBase[dict[str, str]]):
    """`systemctl show -p LoadState -p LimitNOFILE UNIT` as a dict; {} without systemd."""

    @override
    def command(self, unit: str) -> str:
        return (
            "if [ -d /run/systemd/system ]; then systemctl show -p LoadState -p LimitNOFILE "
            f"{shlex.quote(unit)} 2>/dev/null; fi; true"
        )

    @override
    def process(self, output: list[str]) -> dict[str, str]:
        return dict(line.partition("=")[::2] for line in output if "=" in line)


class EffectiveUid(FactBase[int | None]):
    """The uid commands run as (`id -u`: 0 under sudo), None if unknown. `systemd-run` starts
    a system unit, the engines' sandbox, only as root."""

    @override
    def command(self) -> str:
        return "id -u"

    @override
    def process(self, output: list[str]) -> int | None:
        text = output[0].strip() if output else ""
        return int(text) if text.isdigit() else None
