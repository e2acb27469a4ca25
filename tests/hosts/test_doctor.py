"""`servekit doctor` on a two-node stand-in fleet over real SSH: it passes on healthy hosts, and
names exactly the one thing broken on a host, one at a time: a peer's cluster port dropped by a
firewall, a different MTU on one node, a clock ahead on one node, the weights' filesystem too
small. After a deploy it reads the stand-in vLLM's startup lines (vLLM 0.33's format) from the
journal and puts them beside the plan's numbers.

Hosts `a` (head) and `b` (worker), one fake A100 each with the test libcuda (tests/nvidia_repo),
so the CUDA check runs for real inside a sandboxed `systemd-run`. The tests run in order.
"""

from __future__ import annotations

import base64
import json
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
    downloads: Path
    """The same fleet with weights from the Hub: the disk check has a download to size."""


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
             stdin=base64.b64encode(library).decode())  # fmt: skip


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
    sources=Sources(python_index={package_index.url!r}, weights=WEIGHTS),
)"""
    local = source.replace("WEIGHTS", 'LocalPath(path="/srv/models")')
    # doctor reads no secret: the token file need not exist on this machine
    hub = source.replace("WEIGHTS", 'HuggingFace(token=SecretRef(file="/nonexistent/hf-token"))')
    yield DoctorFleet(
        a,
        b,
        write_fleet(workdir / "inventory" / "doc.py", local),
        write_fleet(workdir / "hub" / "doc.py", hub),
    )


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


def all_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    return [c for h in report["hosts"] for c in h["checks"]]


def only_failure(report: dict[str, Any]) -> dict[str, str]:
    """The one failed row of a report (the test broke one thing)."""
    failures = rows(report, "fail")
    assert len(failures) == 1, json.dumps(failures, indent=1)
    return failures[0]


def test_doctor_passes_on_the_healthy_fleet(fleet: DoctorFleet) -> None:
    code, report = doctor(fleet.inventory)
    assert failed(report) == [] and code == 0 and report["failed"] is False
    assert [h["host"] for h in report["hosts"]] == [fleet.a.name, fleet.b.name]
    checks = {(c["host"], c["check"]): c for c in all_rows(report)}
    for host in (fleet.a.name, fleet.b.name):
        cuda = checks[(host, "CUDA")]
        assert cuda["verdict"] == "ok" and cuda["found"].endswith("in the engine sandbox")
        assert checks[(host, "GPUs")]["verdict"] == "ok"
    reach = [c for c in all_rows(report) if c["check"].startswith("reach ")]
    assert reach and {c["host"] for c in reach} == {fleet.b.name}  # the worker reaches the head
    assert all(c["found"] in ("open", "refused") for c in reach)  # nothing listens before deploy
    assert any(c["check"].startswith("MTU") and c["verdict"] == "ok" for c in all_rows(report))
    assert any(c["check"].startswith("clock ") and c["verdict"] == "ok" for c in all_rows(report))


def test_a_different_mtu_on_one_node_is_named(fleet: DoctorFleet) -> None:
    fleet.b.run("ip link set dev host0 mtu 1400")
    try:
        code, report = doctor(fleet.inventory)
    finally:
        fleet.b.run("ip link set dev host0 mtu 1500")
    row = only_failure(report)
    assert code == 1 and row["host"] == fleet.b.name and row["check"].startswith("MTU")
    assert "1400" in row["found"] and "1500" in row["expected"] and "ip link set" in row["fix"]


def test_packets_to_the_heads_cluster_port_dropped_are_named(fleet: DoctorFleet) -> None:
    """The head drops what it would send back to the worker (a blackhole route): the worker's
    connection to the head's cluster port times out, as behind a dropping firewall."""
    fleet.a.run(f"ip route add blackhole {fleet.b.address}/32")
    try:
        code, report = doctor(fleet.inventory)
    finally:
        fleet.a.run(f"ip route del blackhole {fleet.b.address}/32")
    row = only_failure(report)
    assert code == 1 and row["host"] == fleet.b.name and row["check"].startswith("reach ")
    assert fleet.a.address in row["check"] and row["found"] == "timeout"
    assert "dropped" in row["fix"]


def test_a_clock_ahead_on_one_node_is_named(fleet: DoctorFleet) -> None:
    """Containers share the kernel's clock, so the worker's `date` reads 5 minutes ahead (a
    `date` earlier on PATH): what doctor reads of the node's time is all that is faked."""
    fleet.b.run(
        'printf \'#!/bin/sh\\nexec /usr/bin/date -d "now + 300 seconds" "$@"\\n\' '
        "> /usr/local/bin/date && chmod 755 /usr/local/bin/date"
    )
    try:
        assert float(fleet.b.run("date +%s").stdout) - float(fleet.a.run("date +%s").stdout) > 250
        code, report = doctor(fleet.inventory)
    finally:
        fleet.b.run("rm -f /usr/local/bin/date")
    row = only_failure(report)
    assert code == 1 and row["host"] == fleet.b.name and row["check"].startswith("clock ")
    skew = float(row["found"].split()[0])  # "+299.999 s (±0.055 s)": measured, so near 300
    assert 290 <= skew <= 310 and "NTP" in row["fix"], row


def test_a_weights_filesystem_too_small_is_named(fleet: DoctorFleet) -> None:
    """With weights from the Hub, a 64 MiB filesystem where they go cannot hold Llama 3.1 8B."""
    hub = "/var/lib/vllm/huggingface/hub"
    fleet.b.run(f"mkdir -p {hub} && mount -t tmpfs -o size=64m tmpfs {hub}")
    try:
        code, report = doctor(fleet.downloads)
    finally:
        fleet.b.run(f"umount {hub}")
    row = only_failure(report)
    assert code == 1 and row["host"] == fleet.b.name and row["check"] == "disk for weights"
    assert "GiB" in row["found"] and "GiB" in row["expected"]


def test_after_a_deploy_vllms_startup_numbers_sit_beside_the_plan(fleet: DoctorFleet) -> None:
    """The stand-in logs the KV cache it has (vLLM 0.33's lines): half the plan's here, so the
    plan over-promised, which doctor shows side by side and records for the planner."""
    plan = json.loads(
        subprocess.run(
            [str(SERVEKIT), "plan", str(fleet.inventory), "--json"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    planned = plan[0]["kv_cache_tokens"]
    blocks = planned // 2 // 16
    fleet.a.run(f"echo VLLM_STANDIN_KV_BLOCKS={blocks} > /etc/vllm-standin.conf")
    deploy(fleet.inventory).check()
    code, report = doctor(fleet.inventory)
    assert failed(report) == [] and code == 0
    kv = [c for c in all_rows(report) if c["check"].startswith("KV cache tokens")]
    assert [(c["host"], c["verdict"]) for c in kv] == [(fleet.a.name, "warn")]
    assert f"{blocks * 16:,}" in kv[0]["found"] and f"{planned:,}" in kv[0]["expected"]
    reach = [c for c in all_rows(report) if c["check"].startswith("reach ")]
    assert reach and all(c["found"] == "open" for c in reach)  # the head listens now
    saved = json.loads((fleet.inventory.parent / "cloud" / "doc.plan-vs-actual.json").read_text())
    (record,) = saved["log"]
    assert record["kv_cache_tokens"] == blocks * 16 and record["gpu"] == "A100-SXM4-80GB"
