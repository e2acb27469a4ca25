"""/proc/devices as a fact: the character device groups the installed drivers register, and the
DeviceAllow= lines the engine units get from them. The fixtures are built from NVIDIA's driver
sources (tests/data/proc-devices/README.md says how): branch 535 registers `nvidia-frontend`,
545 and later `nvidia` and `nvidiactl` (all at major 195)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servekit import secrets as secret_store
from servekit import systemd
from servekit.facts.devices import PROC_DEVICES, CharDevices, char_device_groups
from servekit.operations.vllm_work import desired_files, host_work
from servekit.placement import plan_fleet
from servekit.render import HostFacts, render_host
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

DATA = Path(__file__).resolve().parents[1] / "data/proc-devices"


def groups(name: str) -> list[str]:
    found = char_device_groups((DATA / f"{name}.txt").read_text())
    assert found is not None
    return found


def plan() -> Any:
    fleet = Fleet(
        name="t",
        machines=[SshHost(name="g", address="10.0.0.5", gpu=Gpu(model="A100-80GB", count=1))],
        serve=[Serve(model="llama-3.1-8b-instruct")],
        engine_api_key=SecretRef(env="K"),
        sources=Sources(weights=HuggingFace(token=SecretRef(env="HF"))),
    )
    return plan_fleet(fleet).hosts["g"]


def device_lines(content: str) -> list[str]:
    return [line for line in content.splitlines() if line.startswith("DeviceAllow=")]


def vllm_unit(facts: HostFacts) -> str:
    (unit,) = [
        f.content
        for f in render_host(plan(), facts=facts)
        if f.path.startswith("/etc/systemd/system/vllm-")
    ]
    return unit


def test_only_character_devices_are_read_in_order_without_repeats() -> None:
    found = groups("branch-580-nvswitch-ib")
    assert found[:3] == ["mem", "/dev/vc/0", "tty"]
    assert found.count("infiniband_verbs") == 1  # a fixed and a dynamic major, one group
    assert found.count("tty") == 1
    assert "sd" not in found and "loop" not in found  # block devices are not char groups
    assert "device-mapper" not in found


def test_branch_535_registers_the_frontend_only() -> None:
    found = groups("branch-535")
    assert "nvidia-frontend" in found and "nvidia-uvm" in found and "nvidia-caps" in found
    assert "nvidia" not in found and "nvidiactl" not in found


def test_branch_580_registers_the_gpus_and_the_control_device() -> None:
    found = groups("branch-580")
    assert {"nvidia", "nvidiactl", "nvidia-uvm", "nvidia-caps-imex-channels"} <= set(found)
    assert "nvidia-frontend" not in found


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        (
            "branch-535",
            ["char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-nvidia-caps rw"],
        ),
        (
            "branch-580",
            [
                "char-nvidia rw",
                "char-nvidiactl rw",
                "char-nvidia-uvm rw",
                "char-nvidia-caps rw",
                "char-nvidia-caps-imex-channels rw",
            ],
        ),
        (
            "branch-580-nvswitch-ib",
            [
                "char-nvidia rw",
                "char-nvidiactl rw",
                "char-nvidia-uvm rw",
                "char-nvidia-caps rw",
                "char-nvidia-nvswitch rw",
                "char-nvidia-caps-imex-channels rw",
                "char-infiniband_verbs rw",
                "/dev/infiniband/rdma_cm rw",
            ],
        ),
        ("no-gpu", []),
    ],
)
def test_engine_units_allow_what_the_driver_registers(fixture: str, expected: list[str]) -> None:
    unit = vllm_unit(HostFacts(char_devices=tuple(groups(fixture))))
    assert device_lines(unit) == [f"DeviceAllow={d}" for d in expected]
    assert "DevicePolicy=closed" in unit.splitlines()


def test_without_the_host_every_branch_is_allowed() -> None:
    """`servekit render` has no host: both the 535 and the 545+ names, so the shown unit works
    on either."""
    lines = device_lines(vllm_unit(HostFacts()))
    for group in ("nvidia", "nvidiactl", "nvidia-frontend", "nvidia-uvm"):
        assert f"DeviceAllow=char-{group} rw" in lines
    assert systemd.device_groups(None) == list(systemd.DEFAULT_GPU_GROUPS)


def test_the_fact_reads_proc_devices_and_survives_its_absence() -> None:
    fact = CharDevices()
    assert "/proc/devices" in fact.command()
    text = (DATA / "branch-580.txt").read_text().splitlines()
    assert fact.process(text) == groups("branch-580")
    assert fact.process(["servekit-no-proc-devices"]) is None
    assert char_device_groups(None) is None


def test_the_vllm_deploy_renders_with_the_hosts_proc_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(secret_store, "read_secret", lambda source: "secret")
    work = host_work(plan())
    assert PROC_DEVICES in work.spec()["read"]
    state = {"read": {PROC_DEVICES: (DATA / "branch-535.txt").read_text()}, "interfaces": {}}
    files = desired_files(work, state)
    (unit,) = [f.content for path, f in files.items() if path.startswith("/etc/systemd/system/v")]
    assert "DeviceAllow=char-nvidia-frontend rw" in device_lines(unit)
    assert "DeviceAllow=char-nvidia rw" not in device_lines(unit)
    unreadable = desired_files(work, {"read": {}, "interfaces": {}})
    (unit,) = [f.content for p, f in unreadable.items() if p.startswith("/etc/systemd/system/v")]
    assert "DeviceAllow=char-nvidia rw" in device_lines(unit)  # the default set
