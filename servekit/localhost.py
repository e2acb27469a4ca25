"""Facts about the machine servekit itself runs on, for inventories of `@local` (a laptop)."""

from __future__ import annotations

import platform
import shutil
import subprocess

from servekit import catalog
from servekit.spec import Gpu


def _run(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def local_os() -> str:
    return "macos" if platform.system() == "Darwin" else "linux"


def local_gpu() -> Gpu | None:
    """This machine's GPU: Apple silicon with its memory, NVIDIA from nvidia-smi, or None."""
    if platform.system() == "Darwin":
        brand = _run("sysctl", "-n", "machdep.cpu.brand_string")  # e.g. "Apple M3 Pro"
        memory = _run("sysctl", "-n", "hw.memsize")
        if brand.startswith("Apple M") and memory.isdigit():
            name = "apple-" + brand.removeprefix("Apple ").lower().replace(" ", "-")
            try:
                catalog.gpu(name)
            except catalog.CatalogError:
                return None
            return Gpu(model=name, memory_gib=round(int(memory) / 2**30))
        return None
    if shutil.which("nvidia-smi"):
        names = _run("nvidia-smi", "--query-gpu=name", "--format=csv,noheader").splitlines()
        if names:
            try:
                catalog.gpu(names[0])
            except catalog.CatalogError:
                return None
            return Gpu(model=names[0], count=len(names))
    return None
