"""Facts about NVIDIA hardware and software on a host: GPUs, PCI devices, NVSwitch, the
loaded driver and the fabric.

Packages are in `nvidia_packages`, the CUDA check in `cuda`.

Each fact survives the outputs real hosts print when things are broken (no driver loaded, a
library/module version mismatch, the tool missing) and turns them into a state the deploy can
explain, instead of failing the host while facts are gathered.
"""

from __future__ import annotations

import csv
import re

from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.facts.probe import MISSING, probe, split_status
from servekit.nvidia.shapes import (
    FabricGpu,
    LoadedDriver,
    PciDevice,
    PciKind,
    SmiGpu,
    SmiGpus,
    SmiState,
)

QUERY_FIELDS = (
    "index,name,uuid,memory.total,driver_version,compute_cap,pci.bus_id,persistence_mode,"
    "mig.mode.current"
)


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
