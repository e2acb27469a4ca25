"""Every unit servekit writes is hardened from ONE definition (servekit/systemd.py) to
`systemd-analyze security --offline=yes` <= 2.5, parses clean with `systemd-analyze verify`, and
keeps every value from a plan one word: nothing in a value can add a directive. The GPU check
runs with the same settings as `systemd-run` properties."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from servekit import systemd
from servekit.facts.cuda import CudaCheck, cuda_check_command
from servekit.inventory import load_fleet_and_plan
from servekit.placement import plan_fleet
from servekit.render import HostFacts, RenderedFile, render_host, render_template
from servekit.spec import (
    Fleet,
    Gpu,
    HuggingFace,
    OllamaSettings,
    SecretRef,
    Serve,
    Sources,
    SshHost,
)

ROOT = Path(__file__).resolve().parents[2]
MAX_EXPOSURE = 2.5
HF = Sources(weights=HuggingFace(token=SecretRef(env="HF")))


def ray_fleet() -> Fleet:
    machines = [
        SshHost(name=f"n{i}", address=f"10.9.0.{10 + i}", gpu=Gpu(model="A100-80GB", count=1))
        for i in range(2)
    ]
    serve = Serve(
        model="llama-3.1-8b-instruct",
        nodes_per_replica=2,
        pipeline_parallel=2,
        distributed_backend="ray",
    )
    return Fleet(
        name="ray", machines=machines, serve=[serve], engine_api_key=SecretRef(env="K"), sources=HF
    )


def ollama_fleet(models_dir: str) -> Fleet:
    return Fleet(
        name="team",
        machines=[SshHost(name="box", address="10.0.0.5", gpu=Gpu(model="L4"))],
        serve=[Serve(model="llama3.1:8b", engine="ollama")],
        ollama=OllamaSettings(models_dir=models_dir),
    )


def every_unit() -> dict[str, RenderedFile]:
    """One of each kind of unit servekit writes, from the inventories and a Ray fleet, with and
    without the host's /proc/devices: `KIND:file` -> file."""
    units: dict[str, RenderedFile] = {}
    seen: set[str] = set()
    plans = [h for inv in sorted((ROOT / "inventories").glob("*.py")) for h in
             load_fleet_and_plan(inv)[1].hosts.values()]  # fmt: skip
    plans += list(plan_fleet(ray_fleet()).hosts.values())
    plans += [plan_fleet(ollama_fleet(d)).hosts["box"] for d in ("/srv/models", "/home/ml/m")]
    for facts_name, facts in [
        ("any-branch", HostFacts()),
        ("535", HostFacts(char_devices=("nvidia-frontend", "nvidia-uvm", "nvidia-caps"))),
    ]:
        for plan in plans:
            for file in render_host(plan, facts=facts):
                if file.path.startswith("/etc/systemd/system/") and file.path.endswith(".service"):
                    kind = Path(file.path).name.split("-")[0].removesuffix(".service")
                    if file.content not in seen:
                        seen.add(file.content)
                        units[f"{kind}:{facts_name}:{len(units)}:{Path(file.path).name}"] = file
    return units


UNITS = every_unit()


def test_every_kind_of_unit_is_covered() -> None:
    kinds = {key.split(":")[0] for key in UNITS}
    assert kinds == {"vllm", "ray", "ollama", "servekit"}
    ollama = [u.content for key, u in UNITS.items() if key.startswith("ollama:")]
    assert any("ProtectHome=no" in c for c in ollama)  # models under /home
    assert any("ProtectHome=yes" in c for c in ollama)


def exposure(path: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


@pytest.mark.parametrize("key", sorted(UNITS))
def test_exposure_is_at_most_2_5(key: str, tmp_path: Path) -> None:
    unit = UNITS[key]
    path = tmp_path / Path(unit.path).name
    path.write_text(unit.content)
    assert exposure(path) <= MAX_EXPOSURE


@pytest.mark.parametrize("key", sorted(UNITS))
def test_units_verify_clean(key: str, tmp_path: Path) -> None:
    """No unknown directive, no bad assignment; only the executables are missing here."""
    unit = UNITS[key]
    path = tmp_path / Path(unit.path).name
    path.write_text(unit.content)
    # Engines require the firewall unit: it sits beside them, as on a host.
    firewall = next(u for k, u in UNITS.items() if k.endswith(":servekit-firewall.service"))
    if path.name != "servekit-firewall.service":
        (tmp_path / "servekit-firewall.service").write_text(firewall.content)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]
    assert problems == []


@pytest.mark.parametrize("key", sorted(UNITS))
def test_one_hardening_block_from_the_shared_definition(key: str) -> None:
    content = UNITS[key].content
    assert content.count("# Hardening (") == 1
    after = content.split("# Hardening (")[1].split("\n", 1)[1].split("\n\n")[0]
    block = [line for line in after.splitlines() if not line.startswith("#")]
    kind = re.match(r"([a-z]+)\)", content.split("# Hardening (")[1])
    assert kind is not None
    base = {"engine": systemd.ENGINE, "ollama": systemd.OLLAMA, "firewall": systemd.FIREWALL}
    expected = [f"{k}={v}" for k, v in base[kind.group(1)]]
    # in order, as defined; ProtectHome= alone follows the plan (models kept under /home)
    assert [line.split("=")[0] for line in block[: len(expected)]] == [
        e.split("=")[0] for e in expected
    ]
    assert {line for line in block[: len(expected)] if not line.startswith("ProtectHome=")} == {
        e for e in expected if not e.startswith("ProtectHome=")
    }
    for setting in ("NoNewPrivileges", "DevicePolicy", "SystemCallFilter", "UMask"):
        outside = content.replace("\n".join(block), "")
        assert f"\n{setting}=" not in outside, setting


def test_render_without_a_host_says_where_the_devices_come_from() -> None:
    shown = [u.content for k, u in UNITS.items() if k.startswith(("vllm:any", "ollama:any"))]
    assert shown and all("# No host read: DeviceAllow= lists the GPU groups" in c for c in shown)
    read = [u.content for k, u in UNITS.items() if k.startswith("vllm:535")]
    assert read and not any("No host read" in c for c in read)


def test_engines_never_deny_write_execute_and_keep_proc_driver_nvidia() -> None:
    engine = dict(systemd.ENGINE)
    assert "MemoryDenyWriteExecute" not in engine  # CUDA, PyTorch and Triton JIT need W+X
    assert engine["ProcSubset"] == "all"  # /proc/driver/nvidia stays visible
    assert engine["CapabilityBoundingSet"] == "" and engine["LimitMEMLOCK"] == "infinity"
    assert "PrivateDevices" not in engine and engine["DevicePolicy"] == "closed"
    firewall = dict(systemd.FIREWALL)
    assert firewall["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert "AF_NETLINK" in firewall["RestrictAddressFamilies"]


def test_run_properties_are_the_unit_lines() -> None:
    sandbox = systemd.engine_sandbox(["/var/lib/vllm"], ["nvidia", "nvidiactl"])
    args = sandbox.run_properties()
    assert args[::2] == ["-p"] * len(sandbox.lines())
    assert args[1::2] == sandbox.lines()
    run = systemd.systemd_run(systemd.gpu_check_sandbox(["nvidia", "nvidia-uvm"]))
    assert "-p" in run and "DeviceAllow=char-nvidia rw" in run
    assert not any(a.startswith("ReadWritePaths=") for a in run)


# --- quoting -----------------------------------------------------------------------------------

INJECTIONS = [
    "x\nExecStartPre=+/bin/sh -c id",
    'a" "ExecStartPre=+/bin/true',
    "100% ${HOME} $(id) `id` ; \\ '",
    "\x1b[0m\r\x7f",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_a_value_stays_one_word(value: str, tmp_path: Path) -> None:
    unit = render_template(
        "vllm.service.j2",
        unit="vllm-x",
        vllm_version="0.33.0",
        checkpoint="c",
        fleet="f",
        serve="s",
        role="server",
        replica=0,
        node_rank=0,
        nnodes=1,
        after=[],
        home="/var/lib/vllm",
        user="vllm",
        env={"ODD": value},
        env_file="/etc/vllm/x.env",
        exec_start=["/opt/vllm/bin/vllm", "serve", value],
        sandbox=systemd.engine_sandbox(["/var/lib/vllm"], ["nvidia"]),
        ready_timeout_s=600,
        firewall_unit="servekit-firewall",
    )
    lines = unit.splitlines()
    assert not any(line.startswith("ExecStartPre") for line in lines)
    assert sum(line.startswith("Environment=") for line in lines) == 1
    assert sum(line.startswith("ExecStart=") for line in lines) == 1
    path = tmp_path / "vllm-x.service"
    path.write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert "Invalid" not in output and "Unknown" not in output and "Ignoring" not in output


def test_quoting_rules() -> None:
    assert systemd.quote('a "b" 100%\\') == '"a \\"b\\" 100%%\\\\"'
    assert systemd.quote("a\nb") == '"a\\x0ab"'
    assert systemd.environment("K", "v") == "K=v"
    assert systemd.environment("K", "v w") == '"K=v w"'
    assert systemd.environment("K", "v", quoted=True) == '"K=v"'
    assert systemd.exec_argv(["/bin/x", "$HOME", "50%", ";", ""]) == '/bin/x $$HOME 50%% \\; ""'
    assert systemd.path("/srv/a b") == '"/srv/a b"'
    for bad in (lambda: systemd.exec_argv(["-/bin/x"]), lambda: systemd.path("rel"),
                lambda: systemd.path("/a\nb"), lambda: systemd.environment("A B", "v"),
                lambda: systemd.bare_path("/a b"), lambda: systemd.name("vllm\n")):  # fmt: skip
        with pytest.raises(systemd.SystemdValueError):
            bad()


# --- the CUDA check's sandbox markers ---------------------------------------------------------


def test_the_check_command_runs_sandboxed_then_plainly_after_a_failure() -> None:
    command = cuda_check_command("/s/cuda_check.py", ["systemd-run", "--wait", "-p", "A=b c"])
    assert "systemd-run --wait -p 'A=b c' \"$(command -v python3)\" /s/cuda_check.py" in command
    assert command.index("servekit-cuda-unsandboxed") > command.index("systemd-run --wait")
    assert "[ -d /run/systemd/system ]" in command


def test_the_check_result_says_where_it_ran() -> None:
    ok = '{"ok": true, "devices": 1}'
    hidden = '{"ok": false, "error": "cuInit: 100", "error_code": 100}'
    fact = CudaCheck()
    inside = fact.process(["servekit-cuda-sandbox=systemd", ok, "servekit-status=0"])
    assert inside["ok"] and inside["sandbox"] == "systemd" and "unsandboxed_ok" not in inside
    sandbox_only = fact.process(
        ["servekit-cuda-sandbox=systemd", hidden, "servekit-cuda-unsandboxed", ok,
         "servekit-status=1"]
    )  # fmt: skip
    assert not sandbox_only["ok"] and sandbox_only["unsandboxed_ok"] is True
    assert sandbox_only["error_code"] == 100
    plain = fact.process(["servekit-cuda-sandbox=none", ok, "servekit-status=0"])
    assert plain["ok"] and plain["sandbox"] == "none"
