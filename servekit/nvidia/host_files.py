"""The files of a GPU host (NVIDIA's repository, nouveau blacklist, unattended-upgrades holds,
persistence, CUDA on PATH), where the GPU deploy writes them; `servekit render` shows them too."""

from __future__ import annotations

from dataclasses import dataclass

from servekit.templating import RenderedFile, render_template

PERSISTENCED_UNIT = "nvidia-persistenced.service"
PERSISTENCED_USER = "root"
"""The account nvidia-persistenced runs as (its `--user`)."""


@dataclass(frozen=True)
class GpuFilePaths:
    """Where the GPU deploy writes its files."""

    sources: str = "/etc/apt/sources.list.d/servekit-nvidia-cuda.sources"
    preferences: str = "/etc/apt/preferences.d/servekit-nvidia-cuda"
    nouveau: str = "/etc/modprobe.d/servekit-blacklist-nouveau.conf"
    unattended_upgrades: str = "/etc/apt/apt.conf.d/51servekit-nvidia"
    persistenced: str = f"/etc/systemd/system/{PERSISTENCED_UNIT}.d/servekit.conf"
    persistenced_wanted: str = "/etc/systemd/system/multi-user.target.d/servekit-nvidia.conf"
    cuda_profile: str = "/etc/profile.d/servekit-cuda.sh"


GPU_PATHS = GpuFilePaths()

# Package names unattended-upgrades must leave alone (Python regular expressions, matched at the
# start of the name): NVIDIA's driver, Canonical's builds of it, Fabric Manager, CUDA, DCGM.
UNATTENDED_UPGRADES_BLACKLIST = (
    "nvidia-",
    "libnvidia-",
    "cuda-",
    "libcuda",
    "libnvcuvid",
    "libnvoptix",
    "xserver-xorg-video-nvidia",
    "libxnvctrl",
    "firmware-nvidia",
    "linux-(modules|objects|signatures)-nvidia-",
    "datacenter-gpu-manager",
)


def gpu_files(
    repository_url: str, keyring: str, cuda_toolkit: str | None, systemd: bool = True
) -> list[RenderedFile]:
    """The files of a GPU host: NVIDIA's repository, nouveau, holds, persistence, CUDA's PATH."""
    paths = GPU_PATHS
    files = [
        RenderedFile(
            paths.sources,
            render_template("nvidia-cuda.sources.j2", url=repository_url, keyring=keyring),
        ),
        RenderedFile(paths.preferences, render_template("nvidia-cuda.pref.j2")),
        RenderedFile(paths.nouveau, render_template("blacklist-nouveau.conf.j2")),
        RenderedFile(
            paths.unattended_upgrades,
            render_template(
                "nvidia-unattended-upgrades.conf.j2", patterns=UNATTENDED_UPGRADES_BLACKLIST
            ),
        ),
    ]
    if systemd:
        files += [
            RenderedFile(
                paths.persistenced,
                render_template("nvidia-persistenced.conf.j2", user=PERSISTENCED_USER),
            ),
            RenderedFile(
                paths.persistenced_wanted,
                render_template("nvidia-persistenced-wanted.conf.j2", unit=PERSISTENCED_UNIT),
            ),
        ]
    if cuda_toolkit:
        files.append(
            RenderedFile(
                paths.cuda_profile, render_template("cuda-profile.sh.j2", version=cuda_toolkit)
            )
        )
    return files
