"""The vLLM deploy on one GPU server (3 fake A100s, stand-in vLLM from the local index, weights
from a local path): first converge, a second run that changes nothing, a config change that
restarts only its unit, systemd bringing back a killed engine, a failed vLLM upgrade that rolls
back while the other replica keeps serving, and secrets kept out of argv, logs and readable files.

The tests share one host and run in order; each starts from what the one before left.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostbench import BenchHost, PackageIndex, PyinfraRun, build_wheel
from hostbench.plugin import HostFactory
from hostbench.pyinfra_run import PYINFRA
from standins import build as standin_build
from standins.build import build_vllm_wheel
from vllm_support import (
    DEPLOY,
    deploy,
    fake_gpus,
    http,
    put_model,
    register_release,
    secret,
    ssh_host,
    unit_show,
    wait_for,
    write_fleet,
)

from servekit import systemd
from servekit.facts.cuda import CudaCheck, cuda_check_command

pytestmark = pytest.mark.hosts
SERVEKIT = Path(systemd.__file__).resolve().parent

ENGINE_KEY = "sk-engine-9f8e7d6c5b4a39281706"
CHAT = ["vllm-chat-0", "vllm-chat-1"]
SMALL = "vllm-small"
# vLLM "0.33.1" for the upgrade tests: a build that cannot start on this host, like a CUDA build
# whose runtime libraries do not match; "0.33.2" is the stand-in again, under a new version. Their
# catalog entries are added by the tests' inventories only.
BROKEN_VLLM = {
    "vllm/__init__.py": "",
    "vllm/_broken.py": (
        "import sys\n\ndef main():\n    print('ImportError: libcudart.so.13: cannot open shared "
        "object file: No such file or directory', file=sys.stderr)\n    sys.exit(1)\n"
    ),
    "vllm-0.33.1.dist-info/entry_points.txt": "[console_scripts]\nvllm = vllm._broken:main\n",
}


@dataclass
class Single:
    host: BenchHost
    index: PackageIndex
    workdir: Path
    key_file: Path
    runs: list[PyinfraRun]

    def fleet(self, small_extra: str = "", version: str = "0.33.0") -> Path:
        fleet = f"""Fleet(
    name="single",
    machines=[{ssh_host(self.host, gpus=3)}],
    serve=[
        Serve(name="chat", model="llama-3.1-8b-instruct", gpus_per_replica=1, replicas=2),
        Serve(name="small", model="qwen2.5-7b-instruct", gpus_per_replica=1, port=8100
              {small_extra}),
    ],
    engine_api_key=SecretRef(file={str(self.key_file)!r}),
    sources=Sources(python_index={self.index.url!r}, weights=LocalPath(path="/srv/models")),
    versions=Versions(vllm={version!r}),
)"""
        path = write_fleet(self.workdir / "inventory" / "single.py", fleet)
        if version != "0.33.0":
            register_release(path, version)
        return path

    def deploy(self, inventory: Path) -> PyinfraRun:
        run = deploy(inventory)
        self.runs.append(run)
        return run

    def pid(self, unit: str) -> str:
        return unit_show(self.host, unit, "MainPID")


@pytest.fixture(scope="module")
def single(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Single]:
    workdir = tmp_path_factory.mktemp("vllm-single")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    (host,) = test_hosts(1)
    fake_gpus(host, count=3)
    put_model(host, "meta-llama/Llama-3.1-8B-Instruct")
    put_model(host, "Qwen/Qwen2.5-7B-Instruct", max_len=32768)
    key_file = secret(workdir, "engine.key", ENGINE_KEY)
    yield Single(host, package_index, workdir, key_file, [])


def test_first_converge_serves_every_replica(single: Single) -> None:
    run = single.deploy(single.fleet()).check()
    changed = run.changes()
    for op in ("Install the vLLM venv", "Write vLLM files (wave 0)", "Start vLLM servers (wave 0)"):
        assert single.host.name in changed[f"vLLM | {op}"], run
    host = single.host
    for unit, port in ((CHAT[0], 8000), (CHAT[1], 8001), (SMALL, 8100)):
        assert unit_show(host, unit, "ActiveState") == "active"
        assert unit_show(host, unit, "UnitFileState") == "enabled"
        assert host.run(f"ps -o user= -p {single.pid(unit)}").stdout.strip() == "vllm"
        assert http(f"http://{host.address}:{port}/health")[0] == 200
        assert http(f"http://{host.address}:{port}/v1/models")[0] == 401  # the key guards /v1
        status, body = http(f"http://{host.address}:{port}/v1/models", ENGINE_KEY)
        assert status == 200 and "Instruct" in body
    env = host.run(f"grep CUDA_VISIBLE_DEVICES /etc/systemd/system/{CHAT[1]}.service").stdout
    assert "CUDA_VISIBLE_DEVICES=1" in env  # models sharing the node get their own GPUs
    modes = host.run("stat -c '%a %U:%G %n' /etc/vllm/*").stdout
    assert "600 root:root /etc/vllm/chat-0.env" in modes
    assert "640 root:vllm /etc/vllm/chat-0.yaml" in modes
    link = host.run("readlink /opt/vllm/current").stdout.strip()
    assert link == "/opt/vllm/venvs/0.33.0"
    marker = host.run("cat /opt/vllm/venvs/0.33.0/.servekit-install.json").stdout
    assert '"cuda": "13.0"' in marker and '"driver": "580.95.05"' in marker


def test_units_are_hardened_on_the_host(single: Single) -> None:
    """The host's own systemd scores each unit the deploy wrote, as loaded: <= 2.5."""
    host = single.host
    for unit in (*CHAT, SMALL, "servekit-firewall"):
        out = host.run(f"systemd-analyze security {unit}.service").stdout
        score = out.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0]
        assert float(score) <= 2.5, (unit, out[-2000:])
        assert host.run(f"systemctl show -p DevicePolicy {unit}.service").stdout.strip() == (
            "DevicePolicy=closed"
        )
    # nft ran in its sandbox (CAP_NET_ADMIN over netlink only) and loaded the rules.
    assert unit_show(host, "servekit-firewall", "ActiveState") == "active"
    assert "table inet servekit" in host.run("nft list tables").stdout


def test_the_gpu_check_runs_in_the_engine_sandbox_on_real_systemd(single: Single) -> None:
    """The GPU deploy's check command on a real systemd: every hardening property is accepted
    by `systemd-run`, the check runs there as an unprivileged user, and (no libcuda on a test
    host) it then runs plainly too, as it does when the sandbox may be the cause."""
    host = single.host
    script = "/usr/local/lib/servekit/cuda_check.py"  # where the GPU deploy puts it (not /tmp:
    # the sandbox has its own)
    host.run(f"mkdir -p /usr/local/lib/servekit && cat > {script} && chmod 755 {script}",
             stdin=(SERVEKIT / "cuda_check.py").read_text())  # fmt: skip
    sandbox = systemd.gpu_check_sandbox(None)
    whoami = [
        *systemd.systemd_run(sandbox),
        "/usr/bin/python3",
        "-c",
        "import os; print(os.getuid())",
    ]
    assert host.run(shlex.join(whoami)).stdout.strip() not in ("", "0")
    output = host.run(cuda_check_command(script, systemd.systemd_run(sandbox))).stdout
    result = CudaCheck().process(output.splitlines())
    assert result["sandbox"] == "systemd", output
    assert not result["ok"] and result.get("unsandboxed_ok") is False, output
    assert str(result["error"]).startswith("libcuda.so.1:"), output  # the check ran inside


def test_second_run_changes_nothing(single: Single) -> None:
    run = single.deploy(single.fleet()).check()
    assert run.changes() == {}, run
    totals = run.report["results"]["totals"]  # host-operations: all without change
    assert totals["no_change"] == totals["hosts"] > 0 and totals["success"] == 0


def test_a_dry_run_lists_the_files_and_units_it_would_change(single: Single) -> None:
    """`pyinfra INVENTORY deploys/vllm.py --dry`: each host lists the files it would write and
    the units it would restart, and nothing on the host changes."""
    before = (single.pid(SMALL), single.host.run("cat /etc/vllm/small.yaml").stdout)
    inventory = single.fleet(small_extra=", max_num_seqs=64")
    done = subprocess.run(
        [str(PYINFRA), str(inventory), str(DEPLOY), "--dry"],
        cwd=inventory.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    said = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    assert done.returncode == 0, said[-3000:]
    host = re.escape(single.host.name)
    assert re.search(rf"\[{host}\]\s+will write /etc/vllm/small\.yaml", said), said[-3000:]
    assert re.search(rf"\[{host}\]\s+will restart vllm-small\.service", said), said[-3000:]
    assert "/etc/vllm/chat-0.yaml" not in said and "vllm-chat-0.service" not in said
    assert (single.pid(SMALL), single.host.run("cat /etc/vllm/small.yaml").stdout) == before


def test_config_change_restarts_only_the_affected_unit(single: Single) -> None:
    before = {unit: single.pid(unit) for unit in [*CHAT, SMALL]}
    run = single.deploy(single.fleet(small_extra=", max_num_seqs=64")).check()
    assert single.host.name in run.changes()["vLLM | Start vLLM servers (wave 1)"], run
    after = {unit: single.pid(unit) for unit in [*CHAT, SMALL]}
    assert after[CHAT[0]] == before[CHAT[0]] and after[CHAT[1]] == before[CHAT[1]]
    assert after[SMALL] != before[SMALL]
    assert "max-num-seqs: 64" in single.host.run("cat /etc/vllm/small.yaml").stdout
    assert http(f"http://{single.host.address}:8100/health")[0] == 200
    assert single.deploy(single.fleet(small_extra=", max_num_seqs=64")).check().changes() == {}


def test_killed_engine_is_restarted_by_systemd(single: Single) -> None:
    host = single.host
    old = single.pid(CHAT[0])
    host.run(f"kill -9 {old}")
    wait_for(lambda: single.pid(CHAT[0]) not in ("0", old), 60, "a new engine process")
    wait_for(lambda: http(f"http://{host.address}:8000/health")[0] == 200, 60, "/health 200")
    assert unit_show(host, CHAT[0], "NRestarts") == "1"


def test_failed_upgrade_rolls_back_and_the_rest_keeps_serving(single: Single) -> None:
    host = single.host
    single.index.add(build_wheel(single.workdir / "broken", "vllm", "0.33.1", files=BROKEN_VLLM))
    untouched = single.pid(CHAT[1])
    run = single.deploy(single.fleet(small_extra=", max_num_seqs=64", version="0.33.1"))
    assert run.returncode == 1, run  # (no JSON: pyinfra stops with "No hosts remaining!")
    assert "libcudart.so.13" in run.stderr  # the new version's journal, shown
    assert "vllm-chat-0 (chat replica 0): the new version" in run.stderr
    assert "rolled back to its previous venv and configuration" in run.stderr
    assert "vllm-chat-1: not rolled out (the rollout stopped when chat replica 0" in run.stderr
    # The new venv was built beside the old one; every unit runs the old one and answers.
    assert host.run("test -x /opt/vllm/venvs/0.33.1/bin/vllm", check=False).returncode == 0
    for unit, port in ((CHAT[0], 8000), (CHAT[1], 8001), (SMALL, 8100)):
        exec_start = unit_show(host, unit, "ExecStart")
        assert "/opt/vllm/venvs/0.33.0/bin/vllm" in exec_start, exec_start
        assert http(f"http://{host.address}:{port}/health")[0] == 200
    assert single.pid(CHAT[1]) == untouched  # replica 1 was never restarted
    assert host.run("readlink /opt/vllm/current").stdout.strip() == "/opt/vllm/venvs/0.33.0"
    assert host.run("ls /var/lib/servekit/rollback").stdout.strip() == ""
    # Back to the working version: only the unused new venv goes, then nothing to do.
    back = single.deploy(single.fleet(small_extra=", max_num_seqs=64")).check()
    assert back.changes() == {"vLLM | Finish the vLLM rollout": [host.name]}, back
    assert host.run("ls /opt/vllm/venvs").stdout.split() == ["0.33.0"]
    again = single.deploy(single.fleet(small_extra=", max_num_seqs=64")).check()
    assert again.changes() == {}, again


def test_upgrade_rolls_one_replica_at_a_time(
    single: Single, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = single.host
    monkeypatch.setattr(standin_build, "VLLM_VERSION", "0.33.2")
    single.index.add(standin_build.build_vllm_wheel(single.workdir / "wheels-0.33.2"))
    run = single.deploy(single.fleet(small_extra=", max_num_seqs=64", version="0.33.2")).check()
    log = run.stderr
    # wave 1 holds replica 0 of each model, wave 2 replica 1: chat-1 restarts only after chat-0
    # answers /health again
    assert log.index("vllm-chat-0.service: http") < log.index("vllm-chat-1.service: restarted")
    changed = run.changes()
    assert changed["vLLM | Start vLLM servers (wave 1)"] == [host.name]
    assert changed["vLLM | Start vLLM servers (wave 2)"] == [host.name]
    for unit, port in ((CHAT[0], 8000), (CHAT[1], 8001), (SMALL, 8100)):
        assert "/opt/vllm/venvs/0.33.2/bin/vllm" in unit_show(host, unit, "ExecStart")
        assert http(f"http://{host.address}:{port}/health")[0] == 200
    assert host.run("readlink /opt/vllm/current").stdout.strip() == "/opt/vllm/venvs/0.33.2"
    assert host.run("readlink /opt/vllm/previous").stdout.strip() == "/opt/vllm/venvs/0.33.0"
    assert host.run("ls /opt/vllm/venvs").stdout.split() == ["0.33.0", "0.33.2"]
    again = single.deploy(single.fleet(small_extra=", max_num_seqs=64", version="0.33.2"))
    assert again.check().changes() == {}, again


def test_secrets_stay_out_of_argv_logs_and_readable_files(single: Single) -> None:
    host = single.host
    assert ENGINE_KEY not in host.run("ps -eo args").stdout
    assert ENGINE_KEY not in host.run("journalctl --no-pager -o cat").stdout
    readable = host.run(
        "find /etc /var /opt /srv /tmp /run /root /home -xdev -type f -perm -0004 "
        f"-exec grep -lF {shlex.quote(ENGINE_KEY)} {{}} + 2>/dev/null; true"
    ).stdout.strip()
    assert readable == ""
    holders = host.run(f"grep -rlF {shlex.quote(ENGINE_KEY)} /etc /var /opt /tmp; true").stdout
    assert sorted(holders.split()) == [f"/etc/vllm/{n}.env" for n in ("chat-0", "chat-1", "small")]
    for run in single.runs:
        assert ENGINE_KEY not in run.stdout + run.stderr
