"""What the NVIDIA facts report (`servekit.facts.nvidia`, `nvidia_packages`, `cuda`): typed shapes
the pure policy reads, kept here so that the policy never imports the facts' pyinfra layer."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

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


PciKind = Literal["gpu", "nvswitch", "other"]


class PciDevice(TypedDict):
    slot: str
    pci_class: str
    device: str
    kind: PciKind


class LoadedDriver(TypedDict):
    version: str
    flavour: Literal["open", "proprietary"]


class FabricGpu(TypedDict):
    bus_id: str
    state: str | None
    status: str | None


class InstalledPackage(TypedDict):
    version: str
    status: str
    installed: bool
    held: bool


class CudaCheckResult(TypedDict, total=False):
    ok: bool
    error: str | None
    error_code: int | None
    devices: int
    driver_cuda_version: str | None
    gpus: list[dict[str, Any]]
    sandbox: Literal["systemd", "none"]  # where the check ran: the engines' sandbox or plain
    unsandboxed_ok: bool | None  # after a failure in the sandbox: whether CUDA works outside


class Toolkit(TypedDict):
    """A CUDA toolkit's nvcc: the release and the build it reports."""

    version: str
    build: str
