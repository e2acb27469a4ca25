"""Facts about NVIDIA hardware and software on a host: GPUs, PCI devices, driver, fabric, packages.

Each fact survives the outputs real hosts print when things are broken (no driver loaded, a
library/module version mismatch, the tool missing) and turns them into a state the deploy can
explain, instead of failing the host while facts are gathered.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from typing import Any, Literal, TypedDict

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.facts.probe import MISSING, STATUS_PREFIX, probe, split_status

QUERY_FIELDS = (
    "index,name,uuid,memory.total,driver_version,compute_cap,pci.bus_id,persistence_mode,"
    "mig.mode.current"
)

SmiState = Literal["ok", "missing", "no_driver", "mismatch", "no_devices", "error"]


class SmiGpu(TypedDict):
    index: int
    name: str
    uuid: str
    memory_mib: int | None
    driver_version: str
    compute_cap: str | None
    pci_bus_id: str
    persistence: bool | None
    mig: bool | None


class SmiGpus(TypedDict):
    state: SmiState
    message: str | None
    gpus: list[SmiGpu]


def _value(text: str) -> str | None:
    text = text.strip()
    return None if not text or text.startswith("[") or text == "N/A" else text


def _switch(text: str) -> bool | None:
    value = _value(text)
    return None if value is None else value == "Enabled"


def _mib(text: str) -> int | None:
    value = _value(text)
    match = re.match(r"\d+", value or "")
    return int(match.group()) if match else None


def _smi_failure(lines: list[str]) -> tuple[SmiState, str]:
    text = " ".join(line.strip() for line in lines if line.strip())
    if "couldn't communicate with the NVIDIA driver" in text:
        return "no_driver", text
    if "Driver/library version mismatch" in text:
        return "mismatch", text
    if "No devices were found" in text:
        return "no_devices", text
    return "error", text or "nvidia-smi failed without output"


class NvidiaGpus(FactBase[SmiGpus]):
    """The GPUs `nvidia-smi --query-gpu` lists, or why it could not list them."""

    @override
    def command(self) -> str:
        return probe(
            "nvidia-smi",
            f"nvidia-smi --query-gpu={QUERY_FIELDS} --format=csv,noheader,nounits",
        )

    @staticmethod
    @override
    def default() -> SmiGpus:
        return {"state": "missing", "message": "nvidia-smi is not installed", "gpus": []}

    @override
    def process(self, output: list[str]) -> SmiGpus:
        lines, status = split_status(output)
        if status in (MISSING, "127"):
            return self.default()
        if status != "0":
            state, message = _smi_failure(lines)
            return {"state": state, "message": message, "gpus": []}
        gpus: list[SmiGpu] = []
        for row in csv.reader(lines, skipinitialspace=True):
            if len(row) != 9 or not row[0].strip().isdigit():
                state, message = _smi_failure(lines)
                return {"state": state, "message": message, "gpus": []}
            gpus.append(
                {
                    "index": int(row[0]),
                    "name": row[1].strip(),
                    "uuid": row[2].strip(),
                    "memory_mib": _mib(row[3]),
                    "driver_version": row[4].strip(),
                    "compute_cap": _value(row[5]),
                    "pci_bus_id": row[6].strip(),
                    "persistence": _switch(row[7]),
                    "mig": _switch(row[8]),
                }
            )
        if not gpus:
            return {"state": "no_devices", "message": "nvidia-smi listed no GPUs", "gpus": []}
        return {"state": "ok", "message": None, "gpus": gpus}


PciKind = Literal["gpu", "nvswitch", "other"]


class PciDevice(TypedDict):
    slot: str
    pci_class: str
    device: str
    kind: PciKind


def _pci_kind(pci_class: str) -> PciKind:
    base = pci_class.lower().removeprefix("0x")[:4]
    if base in ("0300", "0302"):  # VGA compatible / 3D controller
        return "gpu"
    if base == "0680":  # bridge, other: how NVSwitch chips present themselves
        return "nvswitch"
    return "other"


class NvidiaPciDevices(FactBase[list[PciDevice]]):
    """NVIDIA devices on the PCI bus (vendor 0x10de), read from sysfs: no driver or lspci needed."""

    @override
    def command(self) -> str:
        return (
            "for d in /sys/bus/pci/devices/*; do "
            '[ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ] && '
            'echo "${d##*/} $(cat "$d/class") $(cat "$d/device")"; done; true'
        )

    @staticmethod
    @override
    def default() -> list[PciDevice]:
        return []

    @override
    def process(self, output: list[str]) -> list[PciDevice]:
        devices: list[PciDevice] = []
        for line in output:
            parts = line.split()
            if len(parts) == 3:
                slot, pci_class, device = parts
                devices.append(
                    {
                        "slot": slot,
                        "pci_class": pci_class,
                        "device": device,
                        "kind": _pci_kind(pci_class),
                    }
                )
        return devices


class NvswitchDevices(FactBase[list[str]]):
    """NVSwitch devices the loaded driver registered (/proc/driver/nvidia-nvswitch/devices)."""

    @override
    def command(self) -> str:
        return "ls -1 /proc/driver/nvidia-nvswitch/devices/ 2>/dev/null || true"

    @staticmethod
    @override
    def default() -> list[str]:
        return []

    @override
    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class LoadedDriver(TypedDict):
    version: str
    flavour: Literal["open", "proprietary"]


class NvidiaDriver(FactBase[LoadedDriver | None]):
    """The loaded kernel driver's version and flavour (/proc/driver/nvidia/version), or None."""

    @override
    def command(self) -> str:
        return "cat /proc/driver/nvidia/version 2>/dev/null || true"

    @override
    def process(self, output: list[str]) -> LoadedDriver | None:
        for line in output:
            if line.startswith("NVRM version:"):
                match = re.search(r"\s(\d{3}\.\d+(?:\.\d+)?)\s", f"{line} ")
                if match:
                    open_modules = "Open Kernel Module" in line
                    return {
                        "version": match.group(1),
                        "flavour": "open" if open_modules else "proprietary",
                    }
        return None


class FabricGpu(TypedDict):
    bus_id: str
    state: str | None
    status: str | None


class FabricState(FactBase[list[FabricGpu]]):
    """Each GPU's NVSwitch fabric state and status from the `Fabric` section of `nvidia-smi -q`.

    Empty when nvidia-smi is missing or fails (the GPUs fact says why); a GPU whose driver prints
    no Fabric section has state None.
    """

    @override
    def command(self) -> str:
        return probe("nvidia-smi", "nvidia-smi -q")

    @staticmethod
    @override
    def default() -> list[FabricGpu]:
        return []

    @override
    def process(self, output: list[str]) -> list[FabricGpu]:
        lines, status = split_status(output)
        if status != "0":
            return []
        gpus: list[FabricGpu] = []
        section = None
        for line in lines:
            if line.startswith("GPU "):
                gpus.append({"bus_id": line.split()[1], "state": None, "status": None})
                section = None
            elif gpus and not line.startswith("        ") and line.strip():
                section = line.strip().partition(":")[0].strip()
            elif gpus and section == "Fabric" and line.startswith("        ") and ":" in line:
                key, _, value = line.partition(":")
                if key.strip() in ("State", "Status") and not line.startswith("            "):
                    gpus[-1]["state" if key.strip() == "State" else "status"] = _value(value)
        return gpus


class InstalledPackage(TypedDict):
    version: str
    status: str
    installed: bool
    held: bool


# Names of packages that belong to NVIDIA's driver stack, Canonical's builds of it, CUDA and DCGM.
PACKAGE_PATTERN = (
    r"^(nvidia-|libnvidia-|cuda-|libcuda|libnvcuvid|libnvoptix|xserver-xorg-video-nvidia|"
    r"libxnvctrl|firmware-nvidia|linux-(modules|objects|signatures)-nvidia-|datacenter-gpu-manager)"
)


class NvidiaPackages(FactBase[dict[str, InstalledPackage]]):
    """Installed NVIDIA driver, CUDA and DCGM packages: version, dpkg status, and whether held."""

    @override
    def command(self) -> StringCommand:
        return StringCommand(
            "dpkg-query -W -f='${db:Status-Abbrev}|${Package}|${Version}\\n' 2>/dev/null",
            "| grep -E",
            QuoteString(r"\|" + PACKAGE_PATTERN.removeprefix("^")),
            "|| true",
        )

    @staticmethod
    @override
    def default() -> dict[str, InstalledPackage]:
        return {}

    @override
    def process(self, output: list[str]) -> dict[str, InstalledPackage]:
        packages: dict[str, InstalledPackage] = {}
        for line in output:
            parts = line.split("|")
            if len(parts) != 3 or len(parts[0].strip()) < 2:
                continue
            status, name, version = parts[0].strip(), parts[1].strip(), parts[2].strip()
            if status[1] in "nc" or not re.match(PACKAGE_PATTERN, name):
                continue  # not installed, or only its configuration files are left
            packages[name] = {
                "version": version,
                "status": status,
                "installed": status[1] == "i",
                "held": status[0] == "h",
            }
        return packages


class AptVersions(FactBase[list[str]]):
    """Versions of a package the configured apt repositories offer, newest first (apt-cache)."""

    @override
    def command(self, package: str) -> StringCommand:
        return StringCommand("apt-cache madison", QuoteString(package), "2>/dev/null || true")

    @staticmethod
    @override
    def default() -> list[str]:
        return []

    @override
    def process(self, output: list[str]) -> list[str]:
        versions: list[str] = []
        for line in output:
            parts = [part.strip() for part in line.split("|")]
            if len(parts) >= 3 and parts[1] and parts[1] not in versions:
                versions.append(parts[1])
        return versions


class CudaCheckResult(TypedDict, total=False):
    ok: bool
    error: str | None
    error_code: int | None
    devices: int
    driver_cuda_version: str | None
    gpus: list[dict[str, Any]]
    sandbox: Literal["systemd", "none"]  # where the check ran: the engines' sandbox or plain
    unsandboxed_ok: bool | None  # after a failure in the sandbox: whether CUDA works outside


SANDBOX_MARK = "servekit-cuda-sandbox="
UNSANDBOXED_MARK = "servekit-cuda-unsandboxed"


def cuda_check_command(script: str, run_args: list[str]) -> str:
    """Run the CUDA check in the engines' sandbox (`systemd-run ...` argv, built from
    servekit/systemd.py) where systemd runs; if it fails there, run it plainly too, to tell a
    sandbox that hides the GPUs from a driver that does not work. Without systemd (the
    recorded H200 host had none), the check runs plainly and says so."""
    plain = f"python3 {shlex.quote(script)} 2>&1"
    sandboxed = " ".join(shlex.quote(a) for a in run_args)
    sandboxed += f' "$(command -v python3)" {shlex.quote(script)} 2>&1'
    return (
        f'if ! command -v python3 >/dev/null 2>&1; then echo "{STATUS_PREFIX}{MISSING}"; '
        "elif [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then "
        f"echo {SANDBOX_MARK}systemd; {sandboxed}; rc=$?; "
        f'if [ "$rc" -ne 0 ]; then echo {UNSANDBOXED_MARK}; {plain}; fi; '
        f'echo "{STATUS_PREFIX}$rc"; '
        f'else echo {SANDBOX_MARK}none; {plain}; echo "{STATUS_PREFIX}$?"; fi'
    )


def _check_result(lines: list[str], status: str) -> CudaCheckResult:
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                result: CudaCheckResult = json.loads(line)
            except json.JSONDecodeError:
                break
            return result
    text = " ".join(line.strip() for line in lines if line.strip())
    return {"ok": False, "error": f"the CUDA check failed: {text or status}", "error_code": None}


class CudaCheck(FactBase[CudaCheckResult]):
    """The result of servekit's CUDA check (`servekit/cuda_check.py`, uploaded) run by python3,
    inside the engine units' sandbox when `run_args` (a `systemd-run` argv) are given and the
    host runs systemd."""

    @override
    def command(self, script: str, run_args: list[str] | None = None) -> str:
        if not run_args:
            return probe("python3", f"python3 {shlex.quote(script)}")
        return cuda_check_command(script, run_args)

    @staticmethod
    @override
    def default() -> CudaCheckResult:
        return {"ok": False, "error": "python3 is not installed", "error_code": None}

    @override
    def process(self, output: list[str]) -> CudaCheckResult:
        lines, status = split_status(output)
        if status == MISSING:
            return self.default()
        sandbox: Literal["systemd", "none"] = "none"
        if lines and lines[0].startswith(SANDBOX_MARK):
            sandbox = "systemd" if lines[0] == f"{SANDBOX_MARK}systemd" else "none"
            lines = lines[1:]
        outside: list[str] | None = None
        if UNSANDBOXED_MARK in lines:
            at = lines.index(UNSANDBOXED_MARK)
            lines, outside = lines[:at], lines[at + 1 :]
        result = _check_result(lines, status)
        result["sandbox"] = sandbox
        if outside is not None:
            result["unsandboxed_ok"] = bool(_check_result(outside, "").get("ok"))
        return result
