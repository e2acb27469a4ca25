"""The GPU verification runs the CUDA check inside the engine units' sandbox: its `systemd-run`
command carries the units' hardening and the DeviceAllow= lines of the device groups the host's
driver registers in /proc/devices (branch 535: `nvidia-frontend`; 545 on: `nvidia`,
`nvidiactl`), and a sandbox that hides the GPUs is reported as such, not as a driver fault."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import pytest
from gpu_scenarios import host, one_a100, single_a100_data
from gpu_simhost import Run, SimHost, run_gpu_deploy

import servekit.operations.nvidia
from servekit.facts.devices import char_device_groups
from servekit.placement import plan_fleet
from servekit.render import HostFacts, render_host
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

DATA = Path(__file__).resolve().parents[1] / "data/proc-devices"


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servekit.operations.nvidia, "sleep", lambda seconds: None)


def deploy(sim: SimHost, data: dict[str, Any]) -> Run:
    return run_gpu_deploy({"gpu1": sim}, {"gpu1": data})["gpu1"]


def check_commands(sim: SimHost) -> list[list[str]]:
    """The CUDA check commands the deploy ran, as the argv of their `systemd-run` part."""
    found = []
    for command in sim.log:
        if "servekit-cuda-sandbox=" not in command:
            continue
        start = command.index("systemd-run --wait")
        end = command.index('"$(command -v python3)"')
        found.append(shlex.split(command[start:end]))
    return found


def properties(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-p"]


def vllm_unit_hardening(char_devices: tuple[str, ...]) -> set[str]:
    """The hardening block of a vLLM unit rendered for a host with these device groups."""
    fleet = Fleet(
        name="t",
        machines=[SshHost(name="gpu1", address="10.0.0.5", gpu=Gpu(model="A100-80GB", count=1))],
        serve=[Serve(model="llama-3.1-8b-instruct")],
        engine_api_key=SecretRef(env="K"),
        sources=Sources(weights=HuggingFace(token=SecretRef(env="HF"))),
    )
    plan = plan_fleet(fleet).hosts["gpu1"]
    (unit,) = [
        f
        for f in render_host(plan, facts=HostFacts(char_devices=char_devices))
        if f.path.startswith("/etc/systemd/system/vllm-")
    ]
    service = unit.content.split("[Service]")[1].split("[Install]")[0]
    block = service.split("# Hardening")[1].splitlines()[1:]
    return {line for line in block if line and not line.startswith("#")}


@pytest.mark.parametrize(
    ("fixture", "allowed", "absent"),
    [
        ("branch-535", ["char-nvidia-frontend rw", "char-nvidia-uvm rw"], ["char-nvidia rw"]),
        (
            "branch-580",
            ["char-nvidia rw", "char-nvidiactl rw", "char-nvidia-uvm rw", "char-nvidia-caps rw"],
            ["char-nvidia-frontend rw", "char-nvidia-nvswitch rw"],
        ),
    ],
)
def test_the_check_allows_the_groups_the_driver_registers(
    fixture: str, allowed: list[str], absent: list[str]
) -> None:
    sim = host("ubuntu2404", one_a100(), proc_devices=fixture)
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    (argv, *_again) = check_commands(sim)
    assert argv[:5] == ["systemd-run", "--wait", "--pipe", "--collect", "--quiet"]
    props = properties(argv)
    devices = [p.removeprefix("DeviceAllow=") for p in props if p.startswith("DeviceAllow=")]
    assert all(d in devices for d in allowed), devices
    assert not any(d in devices for d in absent), devices
    assert "DynamicUser=yes" in props  # an unprivileged user, like the engines' own


@pytest.mark.parametrize("fixture", ["branch-535", "branch-580", "branch-580-nvswitch-ib"])
def test_the_check_runs_with_exactly_the_engine_units_sandbox(fixture: str) -> None:
    """Every hardening line of the vLLM unit for this host is a property of the check, but
    ReadWritePaths (vLLM's home need not exist yet), and the check adds only its user."""
    sim = host("ubuntu2404", one_a100(), proc_devices=fixture)
    assert not deploy(sim, single_a100_data()).failed
    props = set(properties(check_commands(sim)[0]))
    groups = char_device_groups((DATA / f"{fixture}.txt").read_text())
    assert groups is not None
    unit = vllm_unit_hardening(tuple(groups))
    writable = {line for line in unit if line.startswith("ReadWritePaths=")}
    assert writable == {'ReadWritePaths="/var/lib/vllm"'}
    assert unit - writable == props - {"DynamicUser=yes"}
    for key in ("DevicePolicy=closed", "CapabilityBoundingSet=", "ProtectProc=invisible"):
        assert key in props


def test_infiniband_hosts_allow_the_verbs_devices() -> None:
    sim = host("ubuntu2404", one_a100(), proc_devices="branch-580-nvswitch-ib")
    assert not deploy(sim, single_a100_data()).failed
    props = properties(check_commands(sim)[0])
    assert "DeviceAllow=char-infiniband_verbs rw" in props
    assert "DeviceAllow=/dev/infiniband/rdma_cm rw" in props
    assert "DeviceAllow=char-nvidia-nvswitch rw" in props


def test_a_sandbox_that_hides_the_gpus_is_named_not_the_driver() -> None:
    sim = host("ubuntu2404", one_a100(), sandbox_hides_gpus=True)
    run = deploy(sim, single_a100_data())
    assert run.failed
    message = run.step("Verify").commands[0]
    assert "FAILED: CUDA in the engine sandbox" in message
    assert "the sandbox, not the driver, hides the GPUs" in message
    assert "char-nvidia rw" in message  # what the units allow, to compare with /proc/devices


def test_the_old_device_names_would_hide_the_gpus_of_a_580_driver() -> None:
    """What the issue found: units allowing `nvidia-frontend` (not `nvidia`, `nvidiactl`) on a
    host whose driver registers the new names. The simulated sandbox grants only the listed
    groups, so the check fails there and passes outside."""
    sim = host("ubuntu2404", one_a100())
    command = (
        "servekit-cuda-sandbox= systemd-run -p DeviceAllow=char-nvidia-frontend rw "
        "-p 'DeviceAllow=char-nvidia-uvm rw' cuda_check.py"
    )
    sim.loaded_driver = "580.95.05"
    output = sim.sandboxed_cuda_check(command)
    assert output[0] == "servekit-cuda-sandbox=systemd" and '"ok": false' in output[1]
    assert "servekit-cuda-unsandboxed" in output


def test_without_systemd_the_check_runs_plainly_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sim = host("ubuntu2404", one_a100(), systemd=False)
    deploy(sim, single_a100_data())  # installs the driver; persistence mode comes next run
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    assert "unsandboxed: no systemd on this host" in caplog.text
