"""The host's character device groups, from /proc/devices: which GPU and RDMA devices the
installed drivers really register, so that the engine units allow exactly those
(`DeviceAllow=char-GROUP`, matched by systemd against the names in /proc/devices)."""

from __future__ import annotations

from pyinfra.api.facts import FactBase
from typing_extensions import override

PROC_DEVICES = "/proc/devices"


def char_device_groups(text: str | None) -> list[str] | None:
    """Names of the "Character devices:" section of /proc/devices (fs/char_dev.c
    chrdev_show(): "%3d %s" per region), in order, without repeats; None when unreadable.

    A driver may register several regions under one name (NVIDIA's "nvidia-caps" at two
    majors, InfiniBand's "infiniband_verbs" at a fixed and a dynamic major): one group each.
    """
    if text is None:
        return None
    groups: list[str] = []
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith(":"):
            section = stripped
            continue
        if section != "Character devices:" or not stripped:
            continue
        major, _, group = stripped.partition(" ")
        group = group.strip()
        if major.isdigit() and group and group not in groups:
            groups.append(group)
    return groups


class CharDevices(FactBase[list[str] | None]):
    """Character device groups registered on the host (/proc/devices); None if unreadable."""

    @override
    def command(self) -> str:
        return "cat /proc/devices 2>/dev/null || echo servekit-no-proc-devices"

    @override
    def process(self, output: list[str]) -> list[str] | None:
        if not output or output[-1].strip() == "servekit-no-proc-devices":
            return None
        return char_device_groups("\n".join(output))
