"""The GPU host's verification: GPUs, driver, persistence, fabric and CUDA as vLLM needs them,
each finding with its meaning and fix."""

from __future__ import annotations

from dataclasses import dataclass

from servekit import catalog
from servekit.nvidia.driver_packages import toolkit_package
from servekit.nvidia.gpu_target import GpuTarget, MinimumDriver
from servekit.nvidia.shapes import CudaCheckResult, FabricGpu, SmiGpus, Toolkit

FABRIC_DONE = "Completed"
CUDA_SYSTEM_NOT_READY = 802


@dataclass(frozen=True)
class Finding:
    """One verification check: what was checked, what was found, and if it failed, the fix."""

    ok: bool
    check: str
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        text = f"{mark}: {self.check}: {self.detail}"
        return f"{text}\n      fix: {self.fix}" if self.fix else text


SMI_FINDINGS = {
    "missing": (
        "nvidia-smi is not installed: the driver's utilities are missing",
        "run this deploy again; if the driver comes from elsewhere, install its utilities",
    ),
    "no_driver": (
        "the NVIDIA kernel module is not loaded (nvidia-smi cannot reach the driver)",
        "reboot; if it persists, check `dkms status` for this kernel and Secure Boot "
        "(`mokutil --sb-state`: unsigned modules do not load)",
    ),
    "mismatch": (
        "Driver/library version mismatch: the loaded kernel module is not the installed "
        "driver's (it was upgraded without a reboot)",
        "reboot the host; if it persists, reinstall the driver packages so module and "
        "libraries match",
    ),
    "no_devices": (
        "the driver runs but sees no GPU",
        "check `dmesg | grep -i nvrm` (GPU fallen off the bus, or too old for the open modules)",
    ),
}

CUDA_ERRORS = {
    CUDA_SYSTEM_NOT_READY: (
        "CUDA error 802 (system not yet initialized): the NVSwitch fabric is not trained, so "
        "Fabric Manager is not running",
        "start Fabric Manager (`systemctl enable --now nvidia-fabricmanager`) at exactly the "
        "driver's version; see `journalctl -u nvidia-fabricmanager`",
    ),
    100: ("CUDA sees no device (error 100)", "check `nvidia-smi` and `dmesg | grep -i nvrm`"),
    804: (
        "CUDA forward compatibility is not supported here (error 804)",
        "remove cuda-compat packages, or use a driver branch that supports the CUDA version",
    ),
}


def _versions_ok(driver: str, needed: tuple[MinimumDriver, ...]) -> list[Finding]:
    findings = []
    for minimum in needed:
        ok = catalog.version_tuple(driver) >= catalog.version_tuple(minimum.version)
        findings.append(
            Finding(
                ok,
                "driver version",
                f"{driver} {'≥' if ok else '<'} {minimum.version} needed by {minimum.reason}",
                "" if ok else "set versions.driver_branch to a branch that provides it (580)",
            )
        )
    return findings


def verify(
    target: GpuTarget,
    smi: SmiGpus,
    fabric: list[FabricGpu],
    cuda: CudaCheckResult | None,
    nvswitch: bool,
    toolkit: Toolkit | None = None,
    device_allow: list[str] | None = None,
) -> list[Finding]:
    """Everything vLLM needs from the GPUs (and the toolkit, when asked for), checked on the host
    as it is now."""
    if smi["state"] != "ok":
        detail, fix = SMI_FINDINGS.get(smi["state"], (f"nvidia-smi failed: {smi['message']}", ""))
        return [Finding(False, "driver", f"{detail} ({smi['message']})", fix)]
    gpus = smi["gpus"]
    findings = [_gpus_found(target, [g["name"] for g in gpus])]
    findings += _versions_ok(gpus[0]["driver_version"], target.minimum_drivers)
    off = [str(g["index"]) for g in gpus if g["persistence"] is not True]
    findings.append(
        Finding(
            not off,
            "persistence mode",
            "on for every GPU" if not off else f"off on GPU {', '.join(off)}",
            ""
            if not off
            else "enable nvidia-persistenced with --persistence-mode (this deploy does)",
        )
    )
    if nvswitch:
        findings.append(_fabric_done(fabric))
    findings.append(_cuda_ok(cuda, device_allow or []))
    if target.cuda_toolkit:
        findings.append(_toolkit_ok(target.cuda_toolkit, toolkit))
    return findings


def _toolkit_ok(wanted: str, toolkit: Toolkit | None) -> Finding:
    if toolkit is not None and toolkit["version"] == wanted:
        return Finding(True, "CUDA toolkit", f"{wanted} (nvcc {toolkit['build']})")
    found = f"nvcc reports {toolkit['version']}" if toolkit else "no nvcc"
    return Finding(
        False,
        "CUDA toolkit",
        f"/usr/local/cuda-{wanted}: {found}",
        f"install {toolkit_package(wanted)} from NVIDIA's repository",
    )


def _gpus_found(target: GpuTarget, names: list[str]) -> Finding:
    seen = f"{len(names)} × {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    if not target.declared or target.gpu_model is None:
        return Finding(True, "GPUs", f"{seen} (nothing declared to compare with)")
    models = set()
    for name in names:
        try:
            models.add(catalog.gpu(name).name)
        except catalog.CatalogError:
            models.add(name)
    ok = models == {target.gpu_model} and len(names) == target.gpu_count
    declared = f"{target.gpu_count} × {target.gpu_model}"
    return Finding(
        ok,
        "GPUs",
        f"{seen}, as declared" if ok else f"the host has {seen}; the fleet declares {declared}",
        ""
        if ok
        else f"fix the declaration of {target.host}, or check the hardware (`nvidia-smi -L`)",
    )


def _fabric_done(fabric: list[FabricGpu]) -> Finding:
    states = {g["bus_id"]: g["state"] for g in fabric}
    pending = {bus: state for bus, state in states.items() if state != FABRIC_DONE}
    if fabric and not pending:
        return Finding(True, "NVSwitch fabric", f"{FABRIC_DONE} on {len(fabric)} GPUs")
    detail = ", ".join(f"{bus}: {state}" for bus, state in pending.items()) or "no fabric state"
    return Finding(
        False,
        "NVSwitch fabric",
        f"not trained ({detail}): Fabric Manager is not running or does not match the driver",
        "`systemctl status nvidia-fabricmanager`; its version must equal the driver's "
        "(`dpkg -l nvidia-fabricmanager`, `nvidia-smi`)",
    )


def _cuda_ok(cuda: CudaCheckResult | None, device_allow: list[str]) -> Finding:
    if cuda is None:
        return Finding(False, "CUDA", "the CUDA check did not run", "run the deploy again")
    where = (
        "in the engine sandbox"
        if cuda.get("sandbox") == "systemd"
        else "unsandboxed: no systemd on this host to run it in the engine sandbox"
    )
    if cuda.get("ok"):
        devices = cuda.get("devices", 0)
        return Finding(
            True,
            "CUDA",
            f"initialised {devices} device(s), 1 MiB allocated on each "
            f"(driver supports CUDA {cuda.get('driver_cuda_version')}), {where}",
        )
    if cuda.get("sandbox") == "systemd" and cuda.get("unsandboxed_ok"):
        allowed = ", ".join(device_allow) or "no device"
        return Finding(
            False,
            "CUDA in the engine sandbox",
            "CUDA works outside the sandbox but not inside it: the sandbox, not the driver, hides "
            f"the GPUs, so vLLM would see none (the units allow {allowed}; "
            f"inside: {cuda.get('error')})",
            "compare `cat /proc/devices` with the DeviceAllow= lines of the vLLM unit and "
            "report the missing device group to servekit",
        )
    code = cuda.get("error_code")
    meaning, fix = CUDA_ERRORS.get(code or -1, (str(cuda.get("error")), ""))
    if code is not None and code not in CUDA_ERRORS:
        meaning = f"CUDA failed: {cuda.get('error')}"
        fix = "check `dmesg | grep -i nvrm` and `nvidia-smi -q`"
    return Finding(False, "CUDA", meaning, fix)
