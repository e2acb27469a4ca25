"""Facts about NVIDIA's packages on a host: which are installed (and held), and which versions
apt offers."""

from __future__ import annotations

import re

from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.facts import FactBase
from typing_extensions import override

from servekit.nvidia.shapes import InstalledPackage

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
