"""`servekit doctor` on a two-node stand-in fleet over real SSH: it passes on healthy hosts, and
names exactly the one thing broken on a host, one at a time: a peer's cluster port dropped by a
firewall, a different MTU on one node, a clock ahead on one node, the weights' filesystem too
small. After a deploy it reads the stand-in vLLM's startup lines (vLLM 0.33's format) from the
journal and puts them beside the plan's numbers.

Hosts `a` (head) and `b` (worker), one fake A100 each with the test libcuda (tests/nvidia_repo),
so the CUDA check runs for real inside a sandboxed `systemd-run`. The tests run in order.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostbench import BenchHost, PackageIndex
from hostbench.plugin import HostFactory
from nvidia_repo.standins import hardware, libcuda_library
from standins.build import build_vllm_wheel
from vllm_support import deploy, fake_gpus, put_model, secret, ssh_host, write_fleet

pytestmark = pytest.mark.hosts

SERVEKIT = Path(sys.executable).parent / "servekit"
DRIVER = "580.95.05"


@dataclass
class DoctorFleet:
    a: BenchHost
    b: BenchHost
    inventory: Path


def install_gpu_standins(host: BenchHost, library: bytes) -> None:
    """The fake nvidia-smi, the test libcuda and the hardware file it reads, with the driver
    version a loaded module would report."""
    fake_gpus(host, driver=DRIVER)
    host.run("mkdir -p /etc/servekit-test /run/servekit-standin")
    host.run("cat > /etc/servekit-test/hardware",
             stdin=hardware("NVIDIA A100-SXM4-80GB", 1, 81920, "8.0", "20b2", 0))  # fmt: skip
    host.run(f"echo 'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}' "
             "> /run/servekit-standin/nvidia-version")  # fmt: skip
    host.run("base64 -d > /usr/lib/x86_64-linux-gnu/libcuda.so.1 && ldconfig",
             stdin=__import__("base64").b64encode(library).decode())  # fmt: skip


@pytest.fixture(scope="module")
def fleet(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DoctorFleet]:
    workdir = tmp_path_factory.mktemp("doctor")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    library = libcuda_library(DRIVER, workdir)
    a, b = test_hosts(2).hosts
    for host in (a, b):
        install_gpu_standins(host, library)
        put_model(host, "meta-llama/Llama-3.1-8B-Instruct")
    key = secret(workdir, "engine.key", "sk-doctor-engine")
    source = f"""Fleet(
    name="doc",
    machines=[{ssh_host(a)}, {ssh_host(b)}],
    serve=[Serve(name="chat", model="llama-3.1-8b-instruct", nodes_per_replica=2)],
    engine_api_key=SecretRef(file={str(key)!r}),
    sources=Sources(python_index={package_index.url!r}, weights=LocalPath(path="/srv/models")),
)"""
    yield DoctorFleet(a, b, write_fleet(workdir / "inventory" / "doc.py", source))


def doctor(inventory: Path) -> tuple[int, dict[str, Any]]:
    run = subprocess.run(
        [str(SERVEKIT), "doctor", str(inventory), "--json"],
        capture_output=True, text=True, timeout=600, cwd=inventory.parent,
    )  # fmt: skip
    assert run.stdout.strip(), run.stderr
    return run.returncode, json.loads(run.stdout)


def rows(report: dict[str, Any], verdict: str) -> list[dict[str, str]]:
    return [c for h in report["hosts"] for c in h["checks"] if c["verdict"] == verdict]


def failed(report: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((c["host"], c["check"]) for c in rows(report, "fail"))
