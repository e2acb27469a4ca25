"""Facts about the operating system a GPU driver depends on: release, kernel, Secure Boot, CUDA."""

from __future__ import annotations

import re
from typing import TypedDict

from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.facts.probe import split_status
from servekit.nvidia.shapes import Toolkit


class Release(TypedDict):
    id: str
    version_id: str
    codename: str | None
    pretty_name: str


class OsRelease(FactBase[Release | None]):
    """The distribution and release from /etc/os-release (ID, VERSION_ID, codename)."""

    @override
    def command(self) -> str:
        return "cat /etc/os-release 2>/dev/null || true"

    @override
    def process(self, output: list[str]) -> Release | None:
        fields = {}
        for line in output:
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip().strip("\"'")
        if "ID" not in fields:
            return None
        return {
            "id": fields["ID"],
            "version_id": fields.get("VERSION_ID", ""),
            "codename": fields.get("VERSION_CODENAME") or None,
            "pretty_name": fields.get("PRETTY_NAME", fields["ID"]),
        }


class Kernel(TypedDict):
    release: str
    headers_package: str
    headers_installed: bool


class KernelHeaders(FactBase[Kernel | None]):
    """The running kernel (`uname -r`) and whether its headers package is installed (dpkg)."""

    @override
    def command(self) -> str:
        return (
            'k=$(uname -r); echo "$k"; '
            "dpkg-query -W -f='${db:Status-Abbrev}\\n' \"linux-headers-$k\" 2>/dev/null || true"
        )

    @override
    def process(self, output: list[str]) -> Kernel | None:
        release = output[0].strip() if output else ""
        if not release:
            return None
        status = output[1].strip() if len(output) > 1 else ""
        return {
            "release": release,
            "headers_package": f"linux-headers-{release}",
            "headers_installed": len(status) >= 2 and status[1] == "i",
        }


class SecureBootState(TypedDict):
    efi: bool
    enabled: bool | None
    enrolled_keys: list[str]


# Where DKMS keeps the key it signs modules with: dkms 3 (Debian 12, Ubuntu 24.04), and the MOK
# that Ubuntu's shim-signed creates (Ubuntu 22.04).
DKMS_SIGNING_KEYS = ("/var/lib/dkms/mok.pub", "/var/lib/shim-signed/mok/MOK.der")
SECURE_BOOT_VARIABLE = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


class SecureBoot(FactBase[SecureBootState]):
    """Whether UEFI Secure Boot is on, and which DKMS signing keys are enrolled (mokutil)."""

    @override
    def command(self) -> str:
        keys = " ".join(DKMS_SIGNING_KEYS)
        return (
            "if [ ! -d /sys/firmware/efi ]; then echo boot=bios; else "
            f"v=/sys/firmware/efi/efivars/{SECURE_BOOT_VARIABLE}; "
            "if [ -r $v ]; then echo \"secureboot=$(od -An -t u1 $v | awk '{print $NF}')\"; "
            "else echo secureboot=unknown; fi; fi; "
            f"for k in {keys}; do if [ -f $k ] && command -v mokutil >/dev/null 2>&1; then "
            'echo "key=$k $(mokutil --test-key $k 2>&1 | head -n1)"; fi; done; true'
        )

    @override
    def process(self, output: list[str]) -> SecureBootState:
        state: SecureBootState = {"efi": True, "enabled": None, "enrolled_keys": []}
        for line in output:
            if line == "boot=bios":
                state["efi"], state["enabled"] = False, False
            elif line.startswith("secureboot="):
                value = line.removeprefix("secureboot=").strip()
                state["enabled"] = {"1": True, "0": False}.get(value)
            elif line.startswith("key="):
                path, _, answer = line.removeprefix("key=").partition(" ")
                if "is already enrolled" in answer:
                    state["enrolled_keys"].append(path)
        return state


class CudaToolkit(FactBase[Toolkit | None]):
    """The version `nvcc --version` reports: the nvcc of one toolkit (`/usr/local/cuda-X.Y`), or
    the one on PATH or in /usr/local/cuda; None if there is none."""

    @override
    def command(self, version: str = "") -> str:
        find = "command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null"
        if version:
            if not re.fullmatch(r"\d+\.\d+", version):
                raise ValueError(f"not a CUDA version: {version!r}")
            find = f"ls /usr/local/cuda-{version}/bin/nvcc 2>/dev/null"
        return (
            f"n=$({find}); "
            'if [ -n "$n" ]; then "$n" --version 2>&1; echo "servekit-status=$?"; fi; true'
        )

    @override
    def process(self, output: list[str]) -> Toolkit | None:
        lines, _status = split_status(output)
        for line in lines:
            match = re.search(r"release (\d+\.\d+), V(\d+\.\d+\.\d+)", line)
            if match:
                return {"version": match.group(1), "build": match.group(2)}
        return None


class BootId(FactBase[str | None]):
    """This boot's id; it changes on every boot, also in containers whose uptime is the host's."""

    @override
    def command(self) -> str:
        return "cat /proc/sys/kernel/random/boot_id"

    @override
    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output else None
