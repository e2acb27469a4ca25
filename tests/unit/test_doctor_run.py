"""`servekit doctor` end to end on this machine: pyinfra's @local, an inventory file whose host
cannot be reached, --host limits, a group that raises, and the command's exit status."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from pyinfra.facts.server import Hostname
from typer.testing import CliRunner

from servekit.cli import app
from servekit.doctor import gpu
from servekit.doctor.result import Check, HostFindings
from servekit.doctor.run import Request, run

INVENTORIES = Path(__file__).resolve().parents[2] / "inventories"


def unreachable_inventory(tmp_path: Path) -> Path:
    """inventories/single_a100.py with its host on a closed port here (refused at once); its
    secret files do not exist here, which doctor does not need."""
    text = (INVENTORIES / "single_a100.py").read_text()
    text = text.replace('address="10.0.0.11",', 'address="127.0.0.1", ssh_port=1,')
    path = tmp_path / "fleet.py"
    path.write_text(text)
    return path


def module(name: str, **attributes: Any) -> ModuleType:
    group = ModuleType(name)
    group.__dict__.update(attributes)
    return group


def test_local_without_a_fleet_runs_the_checks_that_need_none() -> None:
    (local,) = run(Request(local=True))
    assert local.host == "@local"
    checks = {c.check: c for c in local.checks}
    assert checks["system checks"].verdict == "skip"
    assert "no fleet declaration" in checks["system checks"].found
    if not Path("/dev/nvidiactl").exists():  # this machine has no NVIDIA GPU
        assert checks["GPUs"].verdict == "skip"


def test_local_with_a_fleet_file_gets_its_localhost_plan() -> None:
    """A group gets the fleet file's LocalHost plan and reads a real fact through pyinfra."""
    seen: list[Any] = []

    def gather(host: Any, plan: Any, findings: HostFindings) -> None:
        seen.append(plan)
        findings.checks.append(Check(host.name, "probe", "-", host.get_fact(Hostname), "ok"))

    probe = module("probe", GROUP="probe", gather=gather)
    (local,) = run(Request(local=True, fleet=INVENTORIES / "laptop.py"), groups=[probe])
    assert seen[0] is not None and seen[0].connection == "local"
    assert [c.found for c in local.checks] == [socket.gethostname()]


def test_an_unreachable_host_is_a_fail_row(tmp_path: Path) -> None:
    (gpu1,) = run(Request(inventory=unreachable_inventory(tmp_path)))
    (row,) = gpu1.checks
    assert (row.host, row.check, row.verdict) == ("gpu1", "connect", "fail")
    assert "Unable to connect to port 1 on 127.0.0.1" in row.found
    assert "address" in row.fix


def test_host_data_the_inventory_sets_after_pyinfra_groups_is_kept(tmp_path: Path) -> None:
    """Inventories may change host data after `pyinfra_groups` (the host tests' known_hosts
    file, a user's SSH options): doctor connects with what pyinfra would."""
    from servekit.doctor.run import file_inventory

    path = unreachable_inventory(tmp_path)
    path.write_text(
        path.read_text()
        + "\nfor _name, _data in gpu:\n    _data['ssh_known_hosts_file'] = '/tmp/doctor-kh'\n"
    )
    (host,) = list(file_inventory(path))
    assert host.name == "gpu1" and host.data.get("ssh_known_hosts_file") == "/tmp/doctor-kh"
    assert host.data.get("servekit") is not None
    assert [h.name for h in file_inventory(path).get_group("gpu")] == ["gpu1"]


def test_host_limit_and_an_unknown_host(tmp_path: Path) -> None:
    found = run(Request(inventory=unreachable_inventory(tmp_path), hosts=("nope",)))
    assert [(f.host, [c.verdict for c in f.checks]) for f in found] == [("nope", ["fail"])]
    assert found[0].checks[0].found == "not in the inventory (gpu1)"


def test_a_group_that_raises_is_a_fail_row_and_the_others_still_run() -> None:
    def broken(host: Any, plan: Any, findings: HostFindings) -> None:
        raise RuntimeError("unexpected answer")

    groups = [module("broken", GROUP="broken", gather=broken, PLAN_OPTIONAL=True), gpu]
    (local,) = run(Request(local=True), groups=groups)
    first = local.checks[0]
    assert (first.check, first.verdict) == ("broken checks", "fail")
    assert first.found == "RuntimeError: unexpected answer"
    assert any(c.check.startswith("GPU") for c in local.checks[1:])


def test_across_rows_are_filed_under_their_host() -> None:
    def gather(host: Any, plan: Any, findings: HostFindings) -> None:
        findings.facts["cmp"] = 1

    def across(plans: Any, findings: Any) -> list[Check]:
        return [Check(name, "compared", "-", str(sorted(plans)), "ok") for name in findings]

    group = module("cmp", GROUP="cmp", gather=gather, across=across)
    (local,) = run(Request(local=True, fleet=INVENTORIES / "laptop.py"), groups=[group])
    assert [(c.check, c.found) for c in local.checks] == [("compared", "['@local']")]


def test_the_command_exits_1_on_a_failure_and_prints_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["doctor", str(unreachable_inventory(tmp_path)), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["failed"] is True and report["counts"]["fail"] == 1
    assert report["hosts"][0]["checks"][0]["check"] == "connect"


def test_the_command_passes_on_this_machine_and_refuses_bad_arguments() -> None:
    result = CliRunner().invoke(app, ["doctor", "--local"])
    if not Path("/dev/nvidiactl").exists():
        assert result.exit_code == 0, result.output
        assert "doctor passed: 1 host(s)" in result.stdout
    assert CliRunner().invoke(app, ["doctor"]).exit_code == 2
    assert CliRunner().invoke(app, ["doctor", "x.py", "--local"]).exit_code == 2
    assert CliRunner().invoke(app, ["doctor", "x.py", "--fleet", "f.py"]).exit_code == 2


def test_a_missing_inventory_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["doctor", str(tmp_path / "none.py")])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert isinstance(result.exception, SystemExit)


ACCEPTANCE = Path(__file__).resolve().parents[1] / "gpu" / "acceptance.sh"
H200 = Path(__file__).resolve().parents[1] / "data/gpu-hosts/h200-ubuntu2404"


def test_the_acceptance_script_parses() -> None:
    subprocess.run(["bash", "-n", str(ACCEPTANCE)], check=True)


def test_the_acceptance_script_stops_clearly_without_nvidia_smi(tmp_path: Path) -> None:
    done = subprocess.run(
        ["/bin/bash", str(ACCEPTANCE), str(tmp_path / "out")],
        env={"PATH": str(tmp_path)},  # nothing on PATH: no nvidia-smi
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: nvidia-smi not found: run this on a machine with")
    assert not (tmp_path / "out").exists()


def test_the_acceptance_script_records_a_machine(tmp_path: Path) -> None:
    """With an nvidia-smi stand-in that prints the real H200's recordings: every file is
    written in the fixture format and doctor's JSON is complete (its CUDA row fails here:
    no libcuda on this machine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        f"D={H200}\n"
        'case "$*" in\n'
        '  "-q -x") f=nvidia-smi-qx.txt;; "-q") f=nvidia-smi-q.txt;;\n'
        '  "nvlink -s") f=nvidia-smi-nvlink.txt;;\n'
        "  --query-gpu=*nounits) f=nvidia-smi-query-nounits.txt;;\n"
        "  *) f=nvidia-smi-query.txt;;\n"
        "esac\n"
        "sed '1d;$d' \"$D/$f\"\n"
    )
    smi.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        [str(ACCEPTANCE), str(out)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    for name in ("proc-devices.txt", "nvidia-smi-q.txt", "cuda-check-sandboxed.txt"):
        lines = (out / name).read_text().splitlines()
        assert lines[0].startswith("$ ") and lines[-1].startswith("[rc="), name
    assert (out / "nvidia-smi-qx.txt").read_text() == (H200 / "nvidia-smi-qx.txt").read_text()
    report = json.loads((out / "doctor-local.json").read_text())
    checks = {c["check"]: c for c in report["hosts"][0]["checks"]}
    assert checks["GPUs"]["found"] == "1 × NVIDIA H200 (nothing declared to compare with)"
    assert "servekit doctor --local exit status: 1" in (out / "README.md").read_text()
