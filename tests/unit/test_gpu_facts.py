"""The GPU facts on real outputs (recorded on an H200 host), error outputs, and constructed
8 × A100 NVSwitch outputs; and the fact commands run in a real shell here."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from servekit.facts.cuda import CudaCheck
from servekit.facts.nvidia import (
    FabricState,
    NvidiaDriver,
    NvidiaGpus,
    NvidiaPciDevices,
    NvswitchDevices,
)
from servekit.facts.nvidia_packages import AptVersions, NvidiaPackages
from servekit.facts.probe import STATUS_PREFIX
from servekit.facts.system import BootId, CudaToolkit, KernelHeaders, OsRelease, SecureBoot

DATA = Path(__file__).resolve().parents[1] / "data/gpu-hosts"
H200 = DATA / "h200-ubuntu2404"
A100 = DATA / "a100-8x-constructed"
ERRORS = DATA / "errors"


def recorded(path: Path) -> tuple[list[str], int]:
    """A fixture's output lines and exit code (first line `$ command`, last `[rc=N]`)."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("$ ")
    match = re.fullmatch(r"\[rc=(\d+)\]", lines[-1])
    assert match, path
    return lines[1:-1], int(match.group(1))


def probed(path: Path) -> list[str]:
    """What the fact's probe() command prints for this recorded output."""
    lines, rc = recorded(path)
    return [*lines, f"{STATUS_PREFIX}{rc}"]


def shell(command: str, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.splitlines()


# --- nvidia-smi --query-gpu ---------------------------------------------------------------------


def test_gpus_from_the_recorded_h200() -> None:
    fact = NvidiaGpus().process(probed(H200 / "nvidia-smi-query-nounits.txt"))
    assert fact["state"] == "ok" and fact["message"] is None
    assert fact["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H200",
            "uuid": "GPU-7bcfea96-e9e6-e75f-24f2-64518b8a6fcb",
            "memory_mib": 143771,
            "driver_version": "580.159.04",
            "compute_cap": "9.0",
            "pci_bus_id": "00000000:00:06.0",
            "persistence": True,
            "mig": False,
        }
    ]


def test_gpus_with_units_and_not_supported_fields() -> None:
    line = (
        "0, NVIDIA H200, GPU-7bcf, 143771 MiB, 580.159.04, [N/A], 00000000:00:06.0, "
        "[Not Supported], Disabled"
    )
    gpu = NvidiaGpus().process([line, f"{STATUS_PREFIX}0"])["gpus"][0]
    assert (gpu["memory_mib"], gpu["compute_cap"], gpu["persistence"]) == (143771, None, None)


def test_gpus_of_the_constructed_hgx() -> None:
    fact = NvidiaGpus().process(probed(A100 / "nvidia-smi-query-nounits.txt"))
    assert [g["name"] for g in fact["gpus"]] == ["NVIDIA A100-SXM4-80GB"] * 8
    assert {g["driver_version"] for g in fact["gpus"]} == {"580.95.05"}
    off = NvidiaGpus().process(probed(A100 / "nvidia-smi-query-persistence-off.txt"))
    assert {g["persistence"] for g in off["gpus"]} == {False}


@pytest.mark.parametrize(
    ("fixture", "state", "words"),
    [
        ("nvidia-smi-missing.txt", "missing", "not installed"),
        ("nvidia-smi-no-driver.txt", "no_driver", "couldn't communicate"),
        ("nvidia-smi-mismatch.txt", "mismatch", "Driver/library version mismatch"),
        ("nvidia-smi-no-devices.txt", "no_devices", "No devices were found"),
    ],
)
def test_gpus_when_nvidia_smi_fails(fixture: str, state: str, words: str) -> None:
    fact = NvidiaGpus().process(probed(ERRORS / fixture))
    assert fact["state"] == state and fact["gpus"] == []
    assert words in (fact["message"] or "")


def test_gpus_command_in_a_shell(tmp_path: Path) -> None:
    """The real command: nvidia-smi missing, working, and failing (a stand-in on PATH)."""
    path = f"{tmp_path}:/usr/bin:/bin"
    assert NvidiaGpus().process(shell(NvidiaGpus().command(), {"PATH": path}))["state"] == (
        "missing"
    )
    smi = tmp_path / "nvidia-smi"
    for fixture, state in [
        (H200 / "nvidia-smi-query-nounits.txt", "ok"),
        (ERRORS / "nvidia-smi-no-driver.txt", "no_driver"),
        (ERRORS / "nvidia-smi-mismatch.txt", "mismatch"),
    ]:
        lines, rc = recorded(fixture)
        smi.write_text("#!/bin/sh\ncat <<'END'\n" + "\n".join(lines) + f"\nEND\nexit {rc}\n")
        smi.chmod(0o755)
        output = shell(NvidiaGpus().command(), {"PATH": path})
        assert output[-1] == f"{STATUS_PREFIX}{rc}"
        assert NvidiaGpus().process(output)["state"] == state


# --- nvidia-smi -q: fabric ------------------------------------------------------------------------


def test_fabric_of_the_recorded_h200_is_not_applicable() -> None:
    fabric = FabricState().process(probed(H200 / "nvidia-smi-q.txt"))
    assert fabric == [{"bus_id": "00000000:00:06.0", "state": None, "status": None}]


def test_fabric_of_the_constructed_hgx() -> None:
    done = FabricState().process(probed(A100 / "nvidia-smi-q.txt"))
    assert len(done) == 8 and {(g["state"], g["status"]) for g in done} == {
        ("Completed", "Success")
    }
    assert done[0]["bus_id"] == "00000000:07:00.0"
    training = FabricState().process(probed(A100 / "nvidia-smi-q-no-fabricmanager.txt"))
    assert {g["state"] for g in training} == {"In Progress"}


@pytest.mark.parametrize("fixture", ["nvidia-smi-q-no-driver.txt", "nvidia-smi-q-mismatch.txt"])
def test_fabric_when_nvidia_smi_fails(fixture: str) -> None:
    assert FabricState().process(probed(ERRORS / fixture)) == []


# --- kernel driver, PCI, NVSwitch -----------------------------------------------------------------


def test_loaded_driver_versions_and_flavours() -> None:
    h200, _ = recorded(H200 / "proc-driver-version.txt")
    assert NvidiaDriver().process(h200) == {"version": "580.159.04", "flavour": "open"}
    old, _ = recorded(ERRORS / "proc-driver-version-proprietary.txt")
    assert NvidiaDriver().process(old) == {"version": "535.104.05", "flavour": "proprietary"}
    missing, _ = recorded(ERRORS / "proc-driver-version-missing.txt")
    assert NvidiaDriver().process(missing) is None
    assert shell(NvidiaDriver().command()) == []  # no driver on this machine


def test_pci_devices() -> None:
    h200, _ = recorded(H200 / "servekit-pci-devices.txt")
    assert NvidiaPciDevices().process(h200) == [
        {"slot": "0000:00:06.0", "pci_class": "0x030200", "device": "0x2335", "kind": "gpu"}
    ]
    hgx, _ = recorded(A100 / "pci-devices.txt")
    kinds = [d["kind"] for d in NvidiaPciDevices().process(hgx)]
    assert kinds.count("gpu") == 8 and kinds.count("nvswitch") == 6
    audio = NvidiaPciDevices().process(["0000:01:00.1 0x040300 0x10fa"])
    assert audio[0]["kind"] == "other"


def test_pci_devices_command_reads_sysfs_here() -> None:
    """This machine has no NVIDIA device: the command runs and finds none."""
    assert NvidiaPciDevices().process(shell(NvidiaPciDevices().command())) == []


def test_nvswitch_devices() -> None:
    hgx, _ = recorded(A100 / "nvswitch-devices.txt")
    assert len(NvswitchDevices().process(hgx)) == 6
    assert shell(NvswitchDevices().command()) == []


# --- packages -------------------------------------------------------------------------------------


def dpkg_list_as_query(path: Path) -> list[str]:
    """The recorded `dpkg -l` lines in the format of NvidiaPackages' dpkg-query (same data)."""
    lines, _ = recorded(path)
    rows = []
    for line in lines:
        status, name, version = line.split()[:3]
        rows.append(f"{status} |{name}|{version}")
    return rows


def test_packages_of_the_recorded_h200() -> None:
    packages = NvidiaPackages().process(dpkg_list_as_query(H200 / "dpkg-nvidia.txt"))
    assert packages["cuda-cudart-13-0"] == {
        "version": "13.0.96-1",
        "status": "ii",
        "installed": True,
        "held": False,
    }
    assert "libnccl2" not in packages  # NCCL is not part of the driver stack
    assert packages["cuda-compat-13-0"]["version"] == "580.95.05-0ubuntu1"
    assert not any(name.startswith(("libcudnn", "nsight")) for name in packages)


def test_packages_states() -> None:
    rows = [
        "hi |nvidia-open-580|580.95.05-1",
        "rc |nvidia-driver-535-server|535.104.05-0ubuntu1",
        "iU |libnvidia-compute-580|580.95.05-0ubuntu1",
        "ii |nvidia-container-toolkit|1.17.8-1",
        "ii |zlib1g|1:1.3",
    ]
    packages = NvidiaPackages().process(rows)
    assert packages["nvidia-open-580"]["held"] and packages["nvidia-open-580"]["installed"]
    assert "nvidia-driver-535-server" not in packages  # only its configuration is left
    assert packages["libnvidia-compute-580"]["installed"] is False
    assert "nvidia-container-toolkit" in packages and "zlib1g" not in packages


def test_packages_command_runs_here() -> None:
    command = NvidiaPackages().command().get_raw_value()
    packages = NvidiaPackages().process(shell(command))
    assert all(re.match(r"(nvidia|libnvidia|cuda|libcuda)", name) for name in packages)


def test_apt_versions() -> None:
    output = [
        " nvidia-fabricmanager | 580.105.08-1 | http://10.0.0.1/debian12/x86_64  Packages",
        " nvidia-fabricmanager | 580.95.05-1 | http://10.0.0.1/debian12/x86_64  Packages",
    ]
    assert AptVersions().process(output) == ["580.105.08-1", "580.95.05-1"]
    assert (
        "'nvidia-fabricmanager'"
        not in AptVersions().command("nvidia-fabricmanager").get_raw_value()
    )


# --- system ---------------------------------------------------------------------------------------


def test_os_release_recorded_and_here() -> None:
    lines, _ = recorded(H200 / "os-release.txt")
    assert OsRelease().process(lines) == {
        "id": "ubuntu",
        "version_id": "24.04",
        "codename": "noble",
        "pretty_name": "Ubuntu 24.04.3 LTS",
    }
    here = OsRelease().process(shell(OsRelease().command()))
    assert here is not None and here["id"] in ("debian", "ubuntu")


def test_kernel_headers() -> None:
    uname, _ = recorded(H200 / "uname.txt")
    release = uname[0].split()[2]
    assert KernelHeaders().process([release]) == {
        "release": "6.18.44-fc-v657-gpu",
        "headers_package": "linux-headers-6.18.44-fc-v657-gpu",
        "headers_installed": False,
    }
    assert KernelHeaders().process(["6.8.0-45-generic", "ii "])["headers_installed"]  # type: ignore[index]
    here = KernelHeaders().process(shell(KernelHeaders().command()))
    assert here is not None and here["release"] == platform.release()


def test_secure_boot() -> None:
    assert SecureBoot().process(["boot=bios"]) == {
        "efi": False,
        "enabled": False,
        "enrolled_keys": [],
    }
    enabled = SecureBoot().process(
        [
            "secureboot=1",
            "key=/var/lib/dkms/mok.pub /var/lib/dkms/mok.pub is already enrolled",
            "key=/var/lib/shim-signed/mok/MOK.der /var/lib/shim-signed/mok/MOK.der is not enrolled",
        ]
    )
    assert enabled == {"efi": True, "enabled": True, "enrolled_keys": ["/var/lib/dkms/mok.pub"]}
    assert SecureBoot().process(["secureboot=0"])["enabled"] is False
    assert SecureBoot().process(["secureboot=unknown"])["enabled"] is None
    here = SecureBoot().process(shell(SecureBoot().command()))
    assert here["efi"] == os.path.isdir("/sys/firmware/efi")


def test_cuda_toolkit() -> None:
    lines, _ = recorded(H200 / "nvcc-version.txt")
    assert CudaToolkit().process(lines) == {"version": "13.0", "build": "13.0.88"}
    assert CudaToolkit().process(["bash: nvcc: command not found"]) is None
    here = shell(CudaToolkit().command())
    if shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"):
        version = subprocess.run(
            ["sh", "-c", "nvcc --version || /usr/local/cuda/bin/nvcc --version"],
            capture_output=True,
            text=True,
        ).stdout
        toolkit = CudaToolkit().process(here)
        assert toolkit is not None and f"release {toolkit['version']}" in version
    else:
        assert here == [] and CudaToolkit().process(here) is None


def test_cuda_toolkit_of_one_version() -> None:
    assert "ls /usr/local/cuda-12.8/bin/nvcc" in CudaToolkit().command("12.8")
    with pytest.raises(ValueError, match="not a CUDA version"):
        CudaToolkit().command("12.8; rm -rf /")


def test_cuda_check_results() -> None:
    ok = (H200 / "cuda-driver-api-check.json").read_text().strip()
    result = CudaCheck().process([ok, f"{STATUS_PREFIX}0"])
    assert result["ok"] and result["devices"] == 1 and result["driver_cuda_version"] == "13.0"
    fabric = (ERRORS / "cuda-driver-api-check-802.json").read_text().strip()
    assert CudaCheck().process([fabric, f"{STATUS_PREFIX}1"])["error_code"] == 802
    assert CudaCheck().process([f"{STATUS_PREFIX}missing"])["error"] == "python3 is not installed"
    broken = CudaCheck().process(["Traceback (most recent call last):", f"{STATUS_PREFIX}1"])
    assert broken["ok"] is False and "Traceback" in str(broken["error"])


def test_boot_id_here() -> None:
    boot_id = BootId().process(shell(BootId().command()))
    assert boot_id is not None and re.fullmatch(r"[0-9a-f-]{36}", boot_id)
