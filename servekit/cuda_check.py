"""Check that CUDA works through the driver API alone: no CUDA toolkit, no PyTorch.

Loads libcuda.so.1 (installed with the driver) with ctypes, initialises CUDA, counts the devices,
and on each creates a context and allocates 1 MiB, which is where an NVSwitch host without Fabric
Manager fails with error 802. Prints one JSON object and exits 0 when CUDA works, 1 otherwise.
The GPU deploy uploads this file and runs it with the host's python3 (standard library only).
"""

from __future__ import annotations

import ctypes
import json
import sys
from typing import Any

ALLOCATION_BYTES = 1 << 20


class CudaError(Exception):
    def __init__(self, code: int, call: str, name: str, text: str) -> None:
        super().__init__(f"{call} failed with {name} ({code}): {text}")
        self.code = code


def _error_text(cuda: Any, code: int) -> tuple[str, str]:
    name, text = ctypes.c_char_p(), ctypes.c_char_p()
    cuda.cuGetErrorName(code, ctypes.byref(name))
    cuda.cuGetErrorString(code, ctypes.byref(text))
    return _text(name), _text(text)


def _text(value: ctypes.c_char_p) -> str:
    return value.value.decode() if value.value else "unknown"


def run(cuda: Any) -> dict[str, Any]:
    """The check itself, on a loaded libcuda (or anything with its functions)."""

    def check(code: int, call: str) -> None:
        if code != 0:
            raise CudaError(code, call, *_error_text(cuda, code))

    result: dict[str, Any] = {"ok": False, "error": None, "error_code": None, "devices": 0}
    result.update(driver_cuda_version=None, gpus=[])
    try:
        check(cuda.cuInit(0), "cuInit")
        version, count = ctypes.c_int(), ctypes.c_int()
        check(cuda.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
        result["driver_cuda_version"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
        check(cuda.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        result["devices"] = count.value
        for index in range(count.value):
            device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
            name, total = ctypes.create_string_buffer(256), ctypes.c_size_t()
            check(cuda.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
            check(cuda.cuDeviceGetName(name, 256, device), "cuDeviceGetName")
            check(cuda.cuDeviceTotalMem_v2(ctypes.byref(total), device), "cuDeviceTotalMem")
            check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate")
            try:
                size = ctypes.c_size_t(ALLOCATION_BYTES)
                check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), size), "cuMemAlloc")
                check(cuda.cuMemFree_v2(pointer), "cuMemFree")
            finally:
                cuda.cuCtxDestroy_v2(context)
            gpu = {"index": index, "name": name.value.decode(), "total_mem": total.value}
            result["gpus"].append(gpu)
        result["ok"] = count.value > 0
        if not count.value:
            result.update(error="CUDA found no device", error_code=100)
    except CudaError as error:
        result.update(error=str(error), error_code=error.code)
    return result


def main() -> int:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        result: dict[str, Any] = {"ok": False, "error": f"libcuda.so.1: {error}"}
        result.update(error_code=None, devices=0, driver_cuda_version=None, gpus=[])
    else:
        result = run(cuda)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
