"""What rendering needs to know about a host itself (gathered by the deploys, placeholders in
`servekit render`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from servekit import systemd


@dataclass(frozen=True)
class HostFacts:
    """What rendering needs from the host itself; unknown values render as placeholders."""

    interfaces: dict[str, str] = field(default_factory=dict)  # address -> interface name
    home: str | None = None  # the login user's home (macOS: Ollama lives there)
    nvidia_repository: str | None = None  # NVIDIA's repository URL for the host's release
    # Character device groups of /proc/devices (facts/devices.py); None: not gathered, and the
    # units allow the GPU groups of every driver branch (systemd.DEFAULT_GPU_GROUPS).
    char_devices: tuple[str, ...] | None = None

    def gpu_device_groups(self) -> list[str]:
        """The GPU/RDMA device groups the engine units allow on this host."""
        return systemd.device_groups(self.char_devices)
