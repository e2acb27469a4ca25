"""servekit/cuda_check.py: the driver-API CUDA check, on a stand-in libcuda and on this machine."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

from servekit import cuda_check

SCRIPT = Path(cuda_check.__file__)
RECORDED = Path(__file__).resolve().parents[1] / "data/gpu-hosts/h200-ubuntu2404"


class FakeLibcuda:
    """The libcuda.so.1 functions the check calls; `fail` maps a function to its error."""

    NAMES: ClassVar[dict[int, bytes]] = {
        802: b"CUDA_ERROR_SYSTEM_NOT_READY",
        3: b"CUDA_ERROR_NOT_INITIALIZED",
    }

    def __init__(self, devices: int = 1, fail: dict[str, int] | None = None) -> None:
        self.devices = devices
        self.fail = fail or {}
        self.allocated: list[int] = []
        self.contexts = 0

    def _result(self, call: str) -> int:
        return self.fail.get(call, 0)

    def cuInit(self, flags: int) -> int:
        return self._result("cuInit")

    def cuDriverGetVersion(self, version: Any) -> int:
        version._obj.value = 13000
        return self._result("cuDriverGetVersion")

    def cuDeviceGetCount(self, count: Any) -> int:
        count._obj.value = self.devices
        return self._result("cuDeviceGetCount")

    def cuDeviceGet(self, device: Any, index: int) -> int:
        device._obj.value = index
        return 0

    def cuDeviceGetName(self, buffer: Any, size: int, device: Any) -> int:
        buffer.value = b"NVIDIA H200"
        return 0

    def cuDeviceTotalMem_v2(self, total: Any, device: Any) -> int:
        total._obj.value = 150109880320
        return 0

    def cuCtxCreate_v2(self, context: Any, flags: int, device: Any) -> int:
        self.contexts += 1
        return self._result("cuCtxCreate_v2")

    def cuMemAlloc_v2(self, pointer: Any, size: ctypes.c_size_t) -> int:
        self.allocated.append(size.value)
        return self._result("cuMemAlloc_v2")

    def cuMemFree_v2(self, pointer: Any) -> int:
        return 0

    def cuCtxDestroy_v2(self, context: Any) -> int:
        self.contexts -= 1
        return 0

    def cuGetErrorName(self, code: int, name: Any) -> int:
        name._obj.value = self.NAMES.get(code, b"CUDA_ERROR_UNKNOWN")
        return 0

    def cuGetErrorString(self, code: int, text: Any) -> int:
        text._obj.value = b"system not yet initialized" if code == 802 else b"unknown error"
        return 0


def test_a_working_gpu_gives_the_recorded_shape() -> None:
    fake = FakeLibcuda()
    result = cuda_check.run(fake)
    recorded = json.loads((RECORDED / "cuda-driver-api-check.json").read_text())
    assert {k: result[k] for k in recorded} == recorded
    assert fake.allocated == [1 << 20] and fake.contexts == 0


def test_fabric_not_ready_surfaces_as_802_at_the_context() -> None:
    fake = FakeLibcuda(devices=8, fail={"cuCtxCreate_v2": 802})
    result = cuda_check.run(fake)
    assert result["ok"] is False and result["error_code"] == 802
    assert "CUDA_ERROR_SYSTEM_NOT_READY" in result["error"] and result["devices"] == 8


def test_allocation_failure_still_destroys_the_context() -> None:
    fake = FakeLibcuda(fail={"cuMemAlloc_v2": 2})
    result = cuda_check.run(fake)
    assert result["error_code"] == 2 and fake.contexts == 0


def test_no_device_is_a_failure() -> None:
    result = cuda_check.run(FakeLibcuda(devices=0))
    assert result["ok"] is False and result["error_code"] == 100


def test_the_script_here_without_a_driver() -> None:
    """This machine has no NVIDIA driver: the script says so in JSON and exits 1."""
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    result = json.loads(done.stdout)
    if result["ok"]:  # a machine with a working GPU
        assert done.returncode == 0 and result["devices"] > 0
    else:
        assert done.returncode == 1 and result["error"]
