"""The vLLM deploy through pyinfra (`@fake` hosts answering from a host state and recorded
`nvidia-smi` output): the units and configs it writes for the example fleets, the venv build it
picks for a driver, refusals that name the fix, and no command at all on a converged host."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from vllm_fakehost import Captured, bare_state, run_vllm_deploy, smi_rows

from servekit import catalog, pyenv
from servekit import secrets as secret_store
from servekit.hostplan import HostPlan, SecretSource, SourcesPlan
from servekit.inventory import load_fleet
from servekit.operations.vllm_work import APT_PACKAGES, host_work
from servekit.placement import NodeAddress, plan_fleet
from servekit.render import HostFacts, render_host
from servekit.spec import Fleet
from servekit.vllm_builds import DriverTooOld, choose_build
from servekit.vllm_layout import LAYOUT

ROOT = Path(__file__).resolve().parents[2]
DRIVER = "580.95.05"


def fake_secret(source: SecretSource) -> str:
    return f"SECRET-{Path(source.file or source.env or '').name}"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secret_store, "read_secret", fake_secret)


def plans_of(inventory: str, **serve_changes: Any) -> dict[str, HostPlan]:
    fleet = load_fleet(ROOT / "inventories" / inventory)
    if serve_changes:
        data = fleet.model_dump()
        data["serve"] = [{**s, **serve_changes} for s in data["serve"]]
        fleet = Fleet(**data)
    addresses = {
        name: NodeAddress(public=f"203.0.113.{10 + i}", private=f"10.0.1.{10 + i}")
        for i, name in enumerate(fleet.host_names())
    }
    plan = plan_fleet(fleet, addresses)
    return {name: host for name, host in plan.hosts.items() if host.vllm}


def deploy(
    plans: dict[str, HostPlan],
    gpu: str,
    driver: str = DRIVER,
    states: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Captured]:
    count = {name: plan.gpu_count for name, plan in plans.items()}
    return run_vllm_deploy(
        plans,
        states or {name: bare_state() for name in plans},
        {name: smi_rows(gpu, count[name], driver) for name in plans},
    )


def test_single_a100_writes_one_unit_and_installs_the_cuda_13_build() -> None:
    plans = plans_of("single_a100.py")
    (run,) = deploy(plans, "A100-SXM4-80GB").values()
    assert not run.failed, run
    files = run.written()
    config = yaml.safe_load(files["/etc/vllm/llama-3-1-8b-instruct.yaml"])
    assert config["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert config["tensor-parallel-size"] == 1 and config["port"] == 8000
    unit = files["/etc/systemd/system/vllm-llama-3-1-8b-instruct.service"]
    assert "ExecStart=/opt/vllm/venvs/0.33.0/bin/vllm serve --config" in unit
    assert "Environment=HF_HUB_OFFLINE=1" in unit
    env = files["/etc/vllm/llama-3-1-8b-instruct.env"]
    assert "VLLM_API_KEY=SECRET-engine.key" in env
    assert "HF_TOKEN" not in env and "SECRET-hf-token" not in unit  # offline engine: no token
    (install,) = run.ran(r"uv pip install .*vllm==")
    assert "vllm==0.33.0" in install and "--index-url https://pypi.org/simple" in install
    assert "CUDA 13.0 build" in install and DRIVER in install
    # the token reaches the downloader on standard input only
    (fetch,) = run.stdin_of("download one checkpoint")
    assert json.loads(fetch)["hf"]["token"] == "SECRET-hf-token"
    assert not any("SECRET-" in command for command in run.commands)
    assert run.ran(r"systemctl enable --quiet servekit-firewall")


def test_node_8xa100_serves_tp8_on_the_whole_node() -> None:
    plans = plans_of("node_8xa100.py")
    (run,) = deploy(plans, "A100-SXM4-80GB").values()
    assert not run.failed, run
    files = run.written()
    config = yaml.safe_load(files["/etc/vllm/llama-3-1-70b-instruct.yaml"])
    assert (config["tensor-parallel-size"], config["pipeline-parallel-size"]) == (8, 1)
    unit = files["/etc/systemd/system/vllm-llama-3-1-70b-instruct.service"]
    assert "CUDA_VISIBLE_DEVICES" not in unit
    ready = int(unit.split("VLLM_ENGINE_READY_TIMEOUT_S=")[1].split()[0])
    assert ready > 600  # scaled up from vLLM's default for 70B


def test_prod_two_replicas_behind_the_gateway() -> None:
    plans = plans_of("prod.py")
    runs = deploy(plans, "A100-SXM4-80GB")
    for name in ("a100-0", "a100-1"):
        assert not runs[name].failed, runs[name]
        config = yaml.safe_load(runs[name].written()["/etc/vllm/llama-3-1-70b-instruct.yaml"])
        assert config["tensor-parallel-size"] == 8 and "nnodes" not in config
    head0 = yaml.safe_load(runs["a100-0"].written()["/etc/vllm/llama-3-1-70b-instruct.yaml"])
    head1 = yaml.safe_load(runs["a100-1"].written()["/etc/vllm/llama-3-1-70b-instruct.yaml"])
    assert head0["host"] == "127.0.0.1"  # the gateway runs on a100-0 itself
    assert head1["host"] == "10.0.1.11"  # the cluster address the gateway reaches
    rules = runs["a100-1"].written()["/etc/servekit/firewall.nft"]
    assert "type ipv4_addr\n\t\telements = { 10.0.1.10 }" in rules  # the admitted4 set
    assert "flags interval\n\t\telements = { 8000 }" in rules  # the protected ports
    assert "ip saddr @admitted4 tcp dport @protected accept" in rules
    assert "tcp dport @protected reject with tcp reset" in rules


def test_prod_one_replica_across_two_nodes_tp8_pp2() -> None:
    plans = plans_of("prod.py", nodes_per_replica=2)
    states = {name: bare_state() for name in plans}
    for i, name in enumerate(plans):
        states[name]["interfaces"] = {"127.0.0.1": "lo", f"10.0.1.{10 + i}": "ens32"}
    runs = deploy(plans, "A100-SXM4-80GB", states=states)
    head = runs["a100-0"].written()
    worker = runs["a100-1"].written()
    head_config = yaml.safe_load(head["/etc/vllm/llama-3-1-70b-instruct.yaml"])
    worker_config = yaml.safe_load(worker["/etc/vllm/llama-3-1-70b-instruct.yaml"])
    for config in (head_config, worker_config):
        assert (config["tensor-parallel-size"], config["pipeline-parallel-size"]) == (8, 2)
        assert (config["nnodes"], config["master-addr"]) == (2, "10.0.1.10")
    assert head_config["node-rank"] == 0 and "headless" not in head_config
    assert worker_config["node-rank"] == 1 and worker_config["headless"] is True
    unit = worker["/etc/systemd/system/vllm-llama-3-1-70b-instruct.service"]
    assert "Environment=NCCL_SOCKET_IFNAME=ens32" in unit
    assert "Environment=GLOO_SOCKET_IFNAME=ens32" in unit
    assert "Environment=VLLM_HOST_IP=10.0.1.11" in unit
    assert "flags interval\n\t\telements = { 29501 }" in worker["/etc/servekit/firewall.nft"]


def converged(plan: HostPlan) -> dict[str, Any]:
    """The state of a host the deploy already converged."""
    work = host_work(plan)
    state = bare_state()
    state["packages"] = dict.fromkeys(APT_PACKAGES, True)
    state["user"] = {"home": "/var/lib/vllm", "shell": "/usr/sbin/nologin", "uid": 999}
    for path, user, group, mode in LAYOUT.directories():
        state["paths"][path] = {"type": "dir", "user": user, "group": group, "mode": mode}
    for file in render_host(plan, secret=fake_secret, facts=HostFacts()):
        digest = hashlib.sha256(file.content.encode()).hexdigest()
        state["paths"][file.path] = {"type": "file", "sha256": digest, "mode": file.mode,
                                     "user": file.user, "group": file.group}  # fmt: skip
    state["paths"][LAYOUT.current_link] = {"type": "link", "target": work.venv}
    for location in work.weights:
        if location.marker:
            state["paths"][location.marker] = {"type": "file", "sha256": "x"}
    state["read"] = {
        LAYOUT.venv_marker_of(work.venv): json.dumps(
            {"vllm": work.version, "requirements": list(work.requirements)}
        ),
        LAYOUT.venv_marker_of(LAYOUT.tools_venv): json.dumps({"requirements": list(work.tools)}),
    }
    state["run"] = {"uv": [0, f"uv {pyenv.UV_VERSION} (x86_64-unknown-linux-gnu)"]}
    state["units"] = {
        unit: {"ActiveState": "active", "SubState": "running", "UnitFileState": "enabled"}
        for unit in work.units()
    }
    state["health"] = {instance.unit: 200 for instance in work.servers}
    return state


def test_a_converged_host_gets_no_command() -> None:
    plans = plans_of("single_a100.py")
    states = {name: converged(plan) for name, plan in plans.items()}
    (run,) = deploy(plans, "A100-SXM4-80GB", states=states).values()
    assert not run.failed, run
    assert [c for c in run.commands if "report the state servekit" not in c] == []
    assert len(run.commands) == 1  # one round trip reads everything


def test_a_changed_config_is_rolled_with_a_backup_and_the_unit_restarted() -> None:
    plans = plans_of("single_a100.py")
    (name,) = plans
    states = {name: converged(plans[name])}
    states[name]["paths"]["/etc/vllm/llama-3-1-8b-instruct.yaml"]["sha256"] = "old"
    (run,) = deploy(plans, "A100-SXM4-80GB", states=states).values()
    (write,) = [s for s in run.stdins if s and '"groups"' in s]
    groups = json.loads(write)["groups"]
    assert groups[0]["backup"] == "/var/lib/servekit/rollback/vllm-llama-3-1-8b-instruct"
    assert [f["path"] for f in groups[0]["files"]] == ["/etc/vllm/llama-3-1-8b-instruct.yaml"]
    (wait,) = [s for s in run.stdins if s and '"jobs"' in s]
    (job,) = json.loads(wait)["jobs"]
    assert job["action"] == "restart" and job["url"] == "http://127.0.0.1:8000/health"


@pytest.mark.parametrize(
    ("driver", "expected"),
    [
        ("470.256.02", None),
        ("535.216.03", "12.9"),
        ("580.95.05", "13.0"),
    ],
)
def test_build_follows_the_driver(driver: str, expected: str | None) -> None:
    plans = plans_of("single_a100.py")
    (run,) = deploy(plans, "A100-SXM4-80GB", driver=driver).values()
    installs = run.ran(r"uv pip install .*vllm==")
    if expected is None:
        assert run.failed and not installs
        (refusal,) = run.ran("too old for vLLM")
        assert "Fix: upgrade the driver with deploys/gpu.py" in refusal
        return
    assert not run.failed
    (install,) = installs
    assert f"CUDA {expected} build" in install
    if expected == "12.9":
        assert "--extra-index-url https://wheels.vllm.ai/0.33.0/cu129" in install
        assert "--extra-index-url https://download.pytorch.org/whl/cu129" in install
        assert "unconfirmed build" in install


def test_no_driver_stops_the_host_with_the_fix() -> None:
    plans = plans_of("single_a100.py")
    (name,) = plans
    runs = run_vllm_deploy(plans, {name: bare_state()}, {name: ["servekit-status=missing"]})
    assert runs[name].failed
    assert runs[name].ran("run deploys/gpu.py on this host first")


def test_choose_build_names_the_alternatives() -> None:
    with pytest.raises(DriverTooOld, match="upgrade the driver") as refused:
        choose_build("0.33.0", SourcesPlan(), "470.256.02")
    assert "CUDA 13.0 build, needs driver >= 580.65.06" in str(refused.value)
    assert "CUDA 12.9 build, needs driver >= 525.60.13" in str(refused.value)
    branches = [b for b, info in catalog.driver_branches().items() if info.max_cuda >= "13.0"]
    assert all(str(b) in str(refused.value) for b in branches)


def test_units_no_longer_planned_are_removed() -> None:
    plans = plans_of("single_a100.py")
    (name,) = plans
    states = {name: converged(plans[name])}
    states[name]["globs"] = {
        "/etc/systemd/system/vllm-old.service": "# vllm-old: vLLM ... Written by servekit.",
        "/etc/systemd/system/vllm-mine.service": "# a unit someone else wrote",
        "/etc/systemd/system/vllm-llama-3-1-8b-instruct.service": "# ... Written by servekit.",
    }
    (run,) = deploy(plans, "A100-SXM4-80GB", states=states).values()
    (removal,) = run.ran("systemctl disable --now")
    assert "vllm-old.service" in removal and "/etc/vllm/old.yaml /etc/vllm/old.env" in removal
    assert "vllm-mine" not in removal and "llama" not in removal


def test_a_mirror_login_reaches_uv_and_pip_through_netrc_only(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pypi.example login alice password s3cr3t-P4ss\n")
    netrc.chmod(0o600)
    login = SecretSource(file=str(netrc), env=None)
    plans = {
        name: plan.model_copy(
            update={"sources": plan.sources.model_copy(update={"mirror_credentials": login})}
        )
        for name, plan in plans_of("single_a100.py").items()
    }
    (run,) = deploy(plans, "A100-SXM4-80GB").values()
    assert not run.failed, run
    (written,) = run.stdin_of(r"umask 077 && mkdir -p /etc/servekit && .* /etc/servekit/netrc")
    assert written.endswith("machine pypi.example login alice password s3cr3t-P4ss\n")
    installs = run.ran(r"pip install")
    assert len(installs) >= 2  # uv itself (pip), then vLLM (uv pip)
    for command in installs:
        assert "NETRC=/etc/servekit/netrc " in command
    assert not any("s3cr3t" in command for command in run.commands)


def test_new_rules_that_a_fresh_connection_cannot_pass_fail_the_host_and_say_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pyinfra.api.exceptions import ConnectError
    from vllm_fakehost import RecordingConnector

    def refuse(self: RecordingConnector) -> None:
        if self is not self.host.connector:  # the fresh connection after loading the rules
            raise ConnectError("Could not connect (Connection refused)")

    monkeypatch.setattr(RecordingConnector, "connect", refuse)
    plans = plans_of("single_a100.py")
    (run,) = deploy(plans, "A100-SXM4-80GB").values()
    assert run.failed
    assert run.ran(r"systemctl restart servekit-firewall-rollback.timer")  # armed before loading
    assert not run.ran(r"systemctl stop servekit-firewall-rollback.timer")  # never disarmed
    assert not run.ran(r"systemctl .*start.* vllm-")  # no engine started after that
    (report,) = [r.message for r in caplog.records if "new SSH connection" in r.message]
    assert "port 22 failed" in report and "Connection refused" in report
    assert "restores the previous firewall rules within 60 s" in report
