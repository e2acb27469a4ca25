"""Where Ollama lives on a host (Linux system paths, the macOS layout in the user's home), which
release asset it comes from, and where its API answers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from servekit import catalog

System = Literal["linux", "macos"]

# Linux: a system install, as Ollama's docs lay it out.
LINUX_PREFIX = "/usr/local"
LINUX_BINARY = f"{LINUX_PREFIX}/bin/ollama"
LINUX_LIBS = f"{LINUX_PREFIX}/lib/ollama"
SERVICE_USER = "ollama"
SERVICE_HOME = "/var/lib/ollama"
GPU_GROUPS = ("render", "video")
"""Groups that own GPU device nodes (AMD's /dev/kfd and /dev/dri); the user joins those present."""
INSTALL_SH_MODELS = "/usr/share/ollama/.ollama/models"
"""Where Ollama's install.sh keeps models (its `ollama` user's home)."""
UNIT = "ollama.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
DROPIN_FILE = f"/etc/systemd/system/{UNIT}.d/servekit.conf"
LINUX_PACKAGES = ("curl", "ca-certificates")
"""What the deploy needs on a Debian/Ubuntu host (plus `zstd` for `.tar.zst` releases)."""

# macOS: everything in the login user's home, nothing needs sudo.
LAUNCHD_LABEL = "com.servekit.ollama"
HOME_PLACEHOLDER = "<home>"
"""Stands for the login user's home in `servekit render` output (known once facts are read)."""

READY_TIMEOUT_S = 90
PULL_STALL_S = 600
"""A pull that receives nothing for this long fails (a 40 GB blob's verification is silent)."""


class ReleaseError(ValueError):
    """A host this module cannot install Ollama on (architecture, system)."""


def go_arch(machine: str) -> str:
    """`uname -m` as Ollama's release assets name it: x86_64 → amd64, aarch64/arm64 → arm64."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine.strip().lower()
    )
    if arch is None:
        raise ReleaseError(
            f"Ollama publishes Linux builds for x86_64 and arm64 only, not {machine.strip()!r}"
        )
    return arch


def asset_name(version: str, system: System, arch: str = "amd64") -> str:
    """The release asset to install: `ollama-darwin.tgz` on macOS; on Linux
    `ollama-linux-<arch>.tar.zst` from 0.14.0 on, `.tgz` before (as on GitHub releases)."""
    if system == "macos":
        return "ollama-darwin.tgz"
    zstd_since = catalog.version_tuple(catalog.ollama_versions().zstd_since)
    ext = "tar.zst" if catalog.version_tuple(version) >= zstd_since else "tgz"
    return f"ollama-linux-{arch}.{ext}"


def release_url(base_url: str, version: str) -> str:
    """The folder of one release: `<base>/v<version>` (GitHub's layout, which mirrors copy)."""
    return f"{base_url.rstrip('/')}/v{version.removeprefix('v')}"


def api_url(listen: str) -> str:
    """Where a client on the host itself reaches a server that listens on `listen` (OLLAMA_HOST):
    0.0.0.0 and :: are reached on loopback, as Ollama's own client does."""
    host, _, port = listen.removeprefix("http://").rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def client_version(output: Iterable[str]) -> str | None:
    """The version of the `ollama` binary from `ollama -v`: the `client version is X` warning
    when the server differs (or none answers), else `ollama version is X`."""
    lines = [line.strip() for line in output]
    for marker in ("Warning: client version is ", "ollama version is "):
        for line in lines:
            if line.startswith(marker):
                return line.removeprefix(marker).strip() or None
    return None


def expand_home(value: str, home: str) -> str:
    """`~/x` → `<home>/x`: launchd and Ollama take paths literally, no shell expands them."""
    if value == "~":
        return home
    return f"{home}{value[1:]}" if value.startswith("~/") else value


@dataclass(frozen=True)
class MacLayout:
    """Where Ollama lives on a Mac, in the login user's home."""

    home: str
    version: str

    @property
    def root(self) -> str:
        return f"{self.home}/.servekit/ollama"

    @property
    def install_dir(self) -> str:
        return f"{self.root}/{self.version}"

    @property
    def binary(self) -> str:
        return f"{self.install_dir}/ollama"

    @property
    def link(self) -> str:
        """`~/.servekit/bin/ollama`, the CLI of the running version for the user's PATH."""
        return f"{self.home}/.servekit/bin/ollama"

    @property
    def plist(self) -> str:
        return f"{self.home}/Library/LaunchAgents/{LAUNCHD_LABEL}.plist"

    @property
    def log(self) -> str:
        """Where the Ollama app logs too, so the usual troubleshooting advice applies."""
        return f"{self.home}/.ollama/logs/server.log"
