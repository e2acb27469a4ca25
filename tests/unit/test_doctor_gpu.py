"""The doctor's GPU rows from recorded outputs (the real H200, the constructed 8 × A100 NVSwitch
host, NVIDIA's error outputs) and from tests/data/doctor: healthy and broken, each with the
message the user sees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_gpu_facts import A100, ERRORS, H200, probed, recorded, shell

from servekit.doctor.gpu import GpuFacts, gpu_checks
from servekit.doctor.result import Check
from servekit.facts.cuda import CudaCheck
from servekit.facts.doctor import (
    EffectiveUid,
    GpuHealthState,
    KernelXidLog,
    NvlinkStatus,
    parse_gpu_health,
    parse_nvlink,
    parse_xids,
)
from servekit.facts.nvidia import FabricState, NvidiaGpus
from servekit.hostplan import HostPlan
from servekit.inventory import load_fleet_and_plan
from servekit.nvidia.gpu_target import GpuTarget, target_from_facts, target_from_plan
from servekit.nvidia.shapes import CudaCheckResult

DOCTOR = Path(__file__).resolve().parents[1] / "data/doctor"
INVENTORIES = Path(__file__).resolve().parents[2] / "inventories"


def host_plan(inventory: str) -> HostPlan:
    _fleet, plan = load_fleet_and_plan(INVENTORIES / inventory)
    return next(iter(plan.hosts.values()))


def cuda(path: Path, sandbox: str = "systemd") -> CudaCheckResult:
    """A recorded CUDA check result as the fact reads it back from the engines' sandbox."""
    return CudaCheck().process([f"servekit-cuda-sandbox={sandbox}", path.read_text().strip(), ""])


def xids(path: Path) -> list[str]:
    return ["servekit-xid-source=journal", *recorded(path)[0]]


def h200_facts(**changes: object) -> GpuFacts:
    """The real H200's outputs (one GPU, no NVSwitch, no NVLink, a clean kernel log)."""
    facts = {
        "smi": NvidiaGpus().process(probed(H200 / "nvidia-smi-query-nounits.txt")),
        "pci_gpus": 1,
        "cuda": cuda(H200 / "cuda-driver-api-check.json"),
        "device_allow": ["char-nvidiactl rw", "char-nvidia rw"],
        "health": GpuHealthState().process(probed(H200 / "nvidia-smi-q.txt")),
        "nvlink": NvlinkStatus().process(probed(H200 / "nvidia-smi-nvlink.txt")),
        "xids": KernelXidLog().process(["servekit-xid-source=journal"]),
    }
    return GpuFacts(**{**facts, **changes})  # type: ignore[arg-type]


def cuda_ok(devices: int) -> CudaCheckResult:
    """A passing check's result on `devices` GPUs, in the engines' sandbox (constructed: the
    H200's recorded result has one device)."""
    result = {"ok": True, "error": None, "error_code": None, "devices": devices}
    result |= {"driver_cuda_version": "13.0", "gpus": []}
    return CudaCheck().process(["servekit-cuda-sandbox=systemd", json.dumps(result), ""])


def a100_facts(**changes: object) -> GpuFacts:
    """The constructed 8 × A100 NVSwitch host, healthy."""
    facts = {
        "smi": NvidiaGpus().process(probed(A100 / "nvidia-smi-query-nounits.txt")),
        "pci_gpus": 8,
        "nvswitch": True,
        "fabric": FabricState().process(probed(A100 / "nvidia-smi-q.txt")),
        "cuda": cuda_ok(8),
        "fabric_manager": "active",
        "health": GpuHealthState().process(probed(A100 / "nvidia-smi-q.txt")),
        "nvlink": NvlinkStatus().process(probed(DOCTOR / "nvidia-smi-nvlink-8x.txt")),
        "xids": KernelXidLog().process(["servekit-xid-source=journal"]),
    }
    return GpuFacts(**{**facts, **changes})  # type: ignore[arg-type]


def h200_target(facts: GpuFacts) -> GpuTarget:
    return target_from_facts("h200", facts.smi, local=True)


def a100_target() -> GpuTarget:
    return target_from_plan(host_plan("node_8xa100.py"), local=False)


def row(rows: list[Check], check: str) -> Check:
    (found,) = [r for r in rows if r.check == check]
    return found


def test_the_real_h200_passes_every_check() -> None:
    facts = h200_facts()
    rows = gpu_checks("h200", h200_target(facts), facts)
    assert [r for r in rows if r.verdict in ("fail", "warn")] == []
    assert row(rows, "GPUs").found == "1 × NVIDIA H200 (nothing declared to compare with)"
    assert row(rows, "driver version").found.startswith("580.159.04 ≥ 580.65.06 needed by vLLM")
    assert "in the engine sandbox" in row(rows, "CUDA").found
    assert row(rows, "ECC errors").found == "none on 1 GPUs"
    nvlink = row(rows, "NVLink")
    assert nvlink.verdict == "skip" and "GPUs without NVLink" in nvlink.found


def test_the_healthy_a100_nvswitch_host_passes_against_its_declaration() -> None:
    rows = gpu_checks("hgx1", a100_target(), a100_facts())
    # the constructed `nvidia-smi -q` has the Fabric section but no ECC section
    assert [(r.check, r.verdict) for r in rows if r.verdict != "ok"] == [("ECC errors", "skip")]
    assert row(rows, "GPUs").found == "8 × NVIDIA A100-SXM4-80GB, as declared"
    assert row(rows, "NVSwitch fabric").found == "Completed on 8 GPUs"
    assert row(rows, "CUDA").found.startswith("initialised 8 device(s), 1 MiB allocated on each")
    assert row(rows, "driver version").expected == "≥ 580.65.06 (vLLM 0.33.0 (CUDA 13.0 build))"
    assert row(rows, "NVLink").found == "6 links up"


def test_driver_too_old_for_the_pinned_vllm() -> None:
    facts = h200_facts()
    old = dict(facts.smi)
    old["gpus"] = [{**gpu, "driver_version": "535.247.01"} for gpu in facts.smi["gpus"]]
    rows = gpu_checks("h200", h200_target(facts), h200_facts(smi=old))
    failed = row(rows, "driver version")
    assert failed.verdict == "fail"
    assert failed.found == "535.247.01 < 580.65.06 needed by vLLM 0.33.0 (CUDA 13.0 build)"
    assert "driver_branch" in failed.fix


@pytest.mark.parametrize(
    ("output", "says", "fix"),
    [
        ("nvidia-smi-mismatch.txt", "Driver/library version mismatch", "reboot the host"),
        ("nvidia-smi-no-devices.txt", "the driver runs but sees no GPU", "check `dmesg"),
    ],
)
def test_driver_failures(output: str, says: str, fix: str) -> None:
    smi = NvidiaGpus().process(probed(ERRORS / output))
    failed = row(gpu_checks("gpu1", a100_target(), a100_facts(smi=smi)), "driver")
    assert failed.verdict == "fail" and says in failed.found
    assert failed.fix.startswith(fix)


def test_a_gpu_fallen_off_the_bus() -> None:
    """GPU 3 (bus 4e) is gone: the driver lists 7 of 8, and the kernel logged Xid 79."""
    smi = NvidiaGpus().process(probed(DOCTOR / "nvidia-smi-query-a100-7of8.txt"))
    log = KernelXidLog().process(xids(DOCTOR / "journal-xid-79.txt"))
    rows = gpu_checks("hgx1", a100_target(), a100_facts(smi=smi, xids=log, cuda=cuda_ok(7)))
    assert row(rows, "GPUs").expected == "8 × A100-SXM4-80GB (the fleet's declaration)"
    assert row(rows, "GPUs").found == (
        "the host has 7 × NVIDIA A100-SXM4-80GB; the fleet declares 8 × A100-SXM4-80GB"
    )
    bus = row(rows, "GPUs on the PCI bus")
    assert bus.verdict == "fail" and bus.found == "8 on the PCI bus, the driver lists 7"
    xid = row(rows, "Xid errors")
    assert xid.verdict == "fail"
    assert xid.found == "1 Xid line(s) (journal); last: Xid 79 on 0000:4e:00: " + (
        "GPU has fallen off the bus"
    )
    assert "reboot" in xid.fix


def test_when_nvidia_smi_fails_the_bus_and_xid_rows_still_say_why() -> None:
    smi = NvidiaGpus().process(probed(ERRORS / "nvidia-smi-no-devices.txt"))
    log = KernelXidLog().process(xids(DOCTOR / "journal-xid-79.txt"))
    rows = gpu_checks("hgx1", a100_target(), GpuFacts(smi=smi, pci_gpus=8, xids=log))
    assert [(r.check, r.verdict) for r in rows] == [
        ("driver", "fail"),
        ("GPUs on the PCI bus", "fail"),
        ("Xid errors", "fail"),
    ]
    assert row(rows, "Xid errors").found.endswith(
        "Xid 79 on 0000:4e:00: GPU has fallen off the bus"
    )


def test_fabric_manager_down_gives_cuda_error_802() -> None:
    fabric = FabricState().process(probed(A100 / "nvidia-smi-q-no-fabricmanager.txt"))
    facts = a100_facts(
        fabric=fabric,
        cuda=cuda(ERRORS / "cuda-driver-api-check-802.json"),
        fabric_manager="inactive",
    )
    rows = gpu_checks("hgx1", a100_target(), facts)
    assert row(rows, "Fabric Manager").verdict == "fail"
    assert row(rows, "Fabric Manager").found == "inactive"
    assert "systemctl enable --now nvidia-fabricmanager" in row(rows, "Fabric Manager").fix
    assert "In Progress" in row(rows, "NVSwitch fabric").found
    failed = row(rows, "CUDA")
    assert failed.verdict == "fail" and failed.found.startswith("CUDA error 802")


def test_the_sandbox_hiding_the_gpus_is_named() -> None:
    failed = CudaCheck().process(
        [
            "servekit-cuda-sandbox=systemd",
            json.dumps({"ok": False, "error": "cuInit failed (100)", "error_code": 100}),
            "servekit-cuda-unsandboxed",
            (H200 / "cuda-driver-api-check.json").read_text().strip(),
            "servekit-status=1",
        ]
    )
    facts = h200_facts(cuda=failed)
    rows = gpu_checks("h200", h200_target(facts), facts)
    sandbox = row(rows, "CUDA in the engine sandbox")
    assert sandbox.verdict == "fail"
    assert "the sandbox, not the driver, hides the GPUs" in sandbox.found
    assert "char-nvidiactl rw" in sandbox.found


def test_ecc_errors_and_a_hardware_slowdown() -> None:
    health = GpuHealthState().process(probed(DOCTOR / "nvidia-smi-q-ecc-slowdown.txt"))
    facts = h200_facts(health=health)
    rows = gpu_checks("h200", h200_target(facts), facts)
    ecc = row(rows, "ECC errors")
    assert ecc.verdict == "fail"
    assert ecc.found == "00000000:00:06.0: 2 uncorrectable (volatile)"
    clocks = row(rows, "GPU clocks")
    assert clocks.verdict == "warn"
    assert clocks.found == "00000000:00:06.0: HW Slowdown, HW Thermal Slowdown"


def test_an_inactive_nvlink() -> None:
    links = NvlinkStatus().process(probed(DOCTOR / "nvidia-smi-nvlink-inactive.txt"))
    rows = gpu_checks("hgx1", a100_target(), a100_facts(nvlink=links))
    nvlink = row(rows, "NVLink")
    assert nvlink.verdict == "fail" and nvlink.found == "1 of 6 links inactive: GPU 1 link 2"


def test_other_xids_warn_with_the_drivers_text() -> None:
    log = KernelXidLog().process(xids(DOCTOR / "journal-xid-13.txt"))
    facts = h200_facts(xids=log)
    xid = row(gpu_checks("h200", h200_target(facts), facts), "Xid errors")
    assert xid.verdict == "warn"
    assert "Xid 13 on 0000:07:00: pid=4242" in xid.found


def test_an_unreadable_kernel_log_is_a_warning_not_a_pass() -> None:
    facts = h200_facts(xids=parse_xids(["servekit-xid-source=none"]))
    xid = row(gpu_checks("h200", h200_target(facts), facts), "Xid errors")
    assert xid.verdict == "warn" and xid.found == "the kernel log could not be read"


def test_a_host_without_gpus_gets_a_skip_row() -> None:
    smi = NvidiaGpus().process(probed(ERRORS / "nvidia-smi-missing.txt"))
    target = target_from_facts("box", smi, local=True)
    rows = gpu_checks("box", target, GpuFacts(smi=smi))
    assert [(r.check, r.verdict, r.found) for r in rows] == [
        ("GPUs", "skip", "no NVIDIA GPU on the PCI bus and none declared")
    ]


def test_declared_gpus_missing_fail() -> None:
    smi = NvidiaGpus().process(probed(ERRORS / "nvidia-smi-missing.txt"))
    rows = gpu_checks("hgx1", a100_target(), GpuFacts(smi=smi))
    assert row(rows, "driver").verdict == "fail"
    assert "nvidia-smi is not installed" in row(rows, "driver").found


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["GPU 00000000:01:00.0", "    ECC Errors", "        Volatile"], None),
        (
            [
                "GPU 00000000:01:00.0",
                "    ECC Errors",
                "        Volatile",
                "            Double Bit",
                "                Device Memory : 1",
                "                Total : 3",
                "        Aggregate",
                "            Double Bit",
                "                Total : 9",
            ],
            3,
        ),
    ],
)
def test_ecc_of_older_drivers(lines: list[str], expected: int | None) -> None:
    """The older layout, Volatile > Double Bit > Total (the aggregate is not counted)."""
    assert parse_gpu_health(lines)[0]["ecc_uncorrectable"] == expected


def test_throttle_reasons_of_older_drivers() -> None:
    lines = [
        "GPU 00000000:01:00.0",
        "    Clocks Throttle Reasons",
        "        Idle                              : Not Active",
        "        SW Thermal Slowdown               : Active",
    ]
    assert parse_gpu_health(lines)[0]["clock_reasons"] == ["SW Thermal Slowdown"]


def test_nvlink_parser_on_the_real_single_gpu_output() -> None:
    assert parse_nvlink(recorded(H200 / "nvidia-smi-nvlink.txt")[0]) == []
    assert NvlinkStatus().process(["servekit-status=missing"]) is None


def test_the_inline_cuda_check_runs_here_without_an_upload() -> None:
    """doctor gives the check's text to `python3 -c` (nothing uploaded): run here, without
    systemd and without an NVIDIA driver, it runs plainly and says libcuda is missing."""
    if Path("/run/systemd/system").exists() or Path("/dev/nvidiactl").exists():
        pytest.skip("this machine runs systemd or has a GPU: the expected answer differs")
    command = CudaCheck().command(script="-", run_args=["systemd-run", "--wait"], inline=True)
    result = CudaCheck().process(shell(command))
    assert result["sandbox"] == "none" and result["ok"] is False
    assert str(result["error"]).startswith("libcuda.so.1: ")


def stub(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_xid_command_reads_the_journal_else_dmesg_else_says_none(tmp_path: Path) -> None:
    """The fact's command here, with journalctl and dmesg stand-ins printing the driver's
    format: an empty journal (no systemd) is not read as 'no Xid'."""
    line = (DOCTOR / "journal-xid-79.txt").read_text().splitlines()[1]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    stub(tmp_path, "journalctl", f"echo 'kernel: Linux version 6.8'; echo '{line}'")
    stub(tmp_path, "dmesg", "exit 1")
    journal = KernelXidLog().process(shell(KernelXidLog().command(), env))
    assert journal == {
        "source": "journal",
        "events": [{"pci": "0000:4e:00", "xid": 79, "text": "GPU has fallen off the bus."}],
    }
    stub(tmp_path, "journalctl", "exit 0")
    assert KernelXidLog().process(shell(KernelXidLog().command(), env))["source"] == "none"
    stub(tmp_path, "dmesg", f"echo '[  12.5] {line}'")
    ring = KernelXidLog().process(shell(KernelXidLog().command(), env))
    assert ring["source"] == "dmesg" and ring["events"][0]["xid"] == 79


def test_without_root_the_sandbox_is_not_checked_and_says_so() -> None:
    facts = h200_facts(cuda=cuda(H200 / "cuda-driver-api-check.json", "none"), root=False)
    rows = gpu_checks("h200", h200_target(facts), facts)
    assert row(rows, "CUDA").verdict == "ok"  # it works, outside the sandbox
    sandbox = row(rows, "CUDA in the engine sandbox")
    assert sandbox.verdict == "warn" and sandbox.found.startswith("not checked: systemd-run")
    assert "--sudo" in sandbox.fix
    uid = EffectiveUid()
    assert uid.process(shell(uid.command())) == os.getuid()
