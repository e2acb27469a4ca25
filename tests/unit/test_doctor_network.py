"""`servekit doctor`'s network checks from recorded outputs (tests/data/doctor_network/, README
there says which are real and which constructed): healthy and broken (MTU mismatch, the head's
cluster port closed or filtered, clock skew, NCCL on the wrong interface, EFA without the plugin),
each with the message the user sees."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from servekit.doctor import network
from servekit.doctor.result import Check, HostFindings
from servekit.facts import doctor_network as facts
from servekit.facts.doctor_network import Interface
from servekit.hostplan import HostPlan
from servekit.placement import plan_fleet
from servekit.spec import Fleet, Gpu, SecretRef, Serve, SshHost

DATA = Path(__file__).parents[1] / "data" / "doctor_network"


def recorded(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


def two_nodes(backend: Literal["mp", "ray"] = "mp") -> dict[str, HostPlan]:
    """A replica over n0 (192.0.2.2, the address the recorded `ip -j addr` holds) and n1."""
    fleet = Fleet(
        name="pair",
        machines=[
            SshHost(name="n0", address="192.0.2.2", gpu=Gpu(model="A100-80GB")),
            SshHost(name="n1", address="192.0.2.3", gpu=Gpu(model="A100-80GB")),
        ],
        serve=[
            Serve(
                model="qwen2.5-7b-instruct",
                nodes_per_replica=2,
                pipeline_parallel=2,
                distributed_backend=backend,
            )
        ],
        engine_api_key=SecretRef(env="ENGINE_KEY"),
    )
    return plan_fleet(fleet).hosts


def interfaces_of_n0() -> list[Interface]:
    """The real recording: eth0 (MTU 1400) holds 192.0.2.2."""
    return facts.parse_interfaces((DATA / "ip-addr-container.json").read_text())


def ip_addr_of_n1() -> str:
    """The same recording with n1's address on eth0 (constructed)."""
    return (DATA / "ip-addr-container.json").read_text().replace("192.0.2.2", "192.0.2.3")


def only(rows: list[Check], check: str) -> Check:
    matching = [r for r in rows if r.check == check]
    assert len(matching) == 1, rows
    return matching[0]


def test_recorded_interfaces_parse_with_mtu_and_addresses() -> None:
    eth0 = next(i for i in interfaces_of_n0() if i["name"] == "eth0")
    assert eth0["mtu"] == 1400 and eth0["up"]
    assert "192.0.2.2" in eth0["addresses"]
    assert network.holder(interfaces_of_n0(), "127.0.0.1") is not None


@pytest.mark.parametrize(
    ("spec", "name", "selected"),
    [
        ("eth", "eth0", True),
        ("eth", "eth10", True),
        ("=eth0", "eth0", True),
        ("=eth0", "eth01", False),
        ("=eth0,eth1", "eth1", True),
        ("^docker", "docker0", False),
        ("^docker", "eth0", True),
        ("^=docker0", "docker01", True),
        ("ib,eth", "sk-br0", False),
    ],
)
def test_nccl_socket_ifname_follows_ncclss_documented_syntax(
    spec: str, name: str, selected: bool
) -> None:
    assert network.nccl_selects(spec, name) is selected


def test_nccl_interface_ok_when_the_variable_names_the_cluster_interface() -> None:
    row = network.nccl_interface_check(
        "n0", "192.0.2.2", {"NCCL_SOCKET_IFNAME": "=eth0"}, interfaces_of_n0()
    )
    assert (row.verdict, row.found) == ("ok", "NCCL_SOCKET_IFNAME==eth0 selects eth0")


def test_nccl_interface_wrong_names_the_right_one() -> None:
    row = network.nccl_interface_check(
        "n0", "192.0.2.2", {"NCCL_SOCKET_IFNAME": "sk-br"}, interfaces_of_n0()
    )
    assert row.verdict == "fail"
    assert row.found == "NCCL_SOCKET_IFNAME=sk-br selects sk-br0"
    assert row.fix == (
        "192.0.2.2 is on eth0: run deploys/vllm.py to write NCCL_SOCKET_IFNAME=eth0 into the "
        "unit (the interfaces changed since)"
    )


def test_nccl_interface_unset_is_a_warning_that_says_what_to_set() -> None:
    row = network.nccl_interface_check("n0", "192.0.2.2", {}, interfaces_of_n0())
    assert row.verdict == "warn"
    assert "eth0 holds 192.0.2.2; NCCL_SOCKET_IFNAME unset" in row.found
    assert row.fix == (
        "run deploys/vllm.py: it writes NCCL_SOCKET_IFNAME=eth0 and GLOO_SOCKET_IFNAME=eth0 "
        "into the unit"
    )


def test_a_cluster_address_on_no_interface_fails() -> None:
    row = network.nccl_interface_check("n0", "198.51.100.7", {}, interfaces_of_n0())
    assert row.verdict == "fail"
    assert row.expected == "an interface holds 198.51.100.7"
    assert "eth0 192.0.2.2" in row.found


def test_recorded_port_probes_tell_open_refused_and_dropped_apart() -> None:
    reach = facts.parse_port_reach(recorded("port-reach-open-refused-timeout.txt"))
    assert reach == {
        "127.0.0.1:29501": "open",
        "127.0.0.1:6379": "refused",
        "192.0.2.123:29501": "timeout",
    }


def worker() -> Any:
    return two_nodes()["n1"].vllm[0]


def test_the_worker_reaches_the_heads_master_port() -> None:
    assert network.cluster_targets(worker()) == [("192.0.2.2", 29501)]
    assert network.cluster_targets(two_nodes()["n0"].vllm[0]) == []
    rows = network.port_checks("n1", worker(), {"192.0.2.2:29501": "open"}, True)
    assert [(r.check, r.verdict) for r in rows] == [("reach n0 192.0.2.2:29501", "ok")]


def test_ray_workers_check_the_heads_gcs_and_manager_ports() -> None:
    ray_worker = two_nodes("ray")["n1"].vllm[0]
    assert network.cluster_targets(ray_worker) == [
        ("192.0.2.2", 6379),
        ("192.0.2.2", 6380),
        ("192.0.2.2", 6381),
    ]


def test_a_closed_head_port_fails_once_the_engines_run() -> None:
    closed = {"192.0.2.2:29501": "refused"}
    before = network.port_checks("n1", worker(), closed, engines_running=False)[0]
    after = network.port_checks("n1", worker(), closed, engines_running=True)[0]
    assert before.verdict == "ok"
    assert (after.verdict, after.found) == ("fail", "refused")
    assert after.fix.startswith("nothing listens on n0 192.0.2.2:29501")
    assert "journalctl -u vllm-qwen2-5-7b-instruct -b` on n0" in after.fix


def test_a_dropped_head_port_fails_and_names_the_firewall() -> None:
    row = network.port_checks("n1", worker(), {"192.0.2.2:29501": "timeout"}, False)[0]
    assert row.verdict == "fail"
    assert row.fix == (
        "packets to n0 192.0.2.2:29501 are dropped: admit TCP 29501 from this node in the "
        "security group or firewall between the nodes"
    )


def test_clock_without_systemd_is_read_and_ntp_unknown_warns() -> None:
    clock = facts.parse_clock(recorded("clock-no-systemd.txt"))
    assert clock["epoch"] is not None and clock["epoch"] > 1.7e9
    row = network.ntp_check("n0", clock["ntp_synchronized"])
    assert (row.verdict, row.found) == ("warn", "unknown (no timedatectl)")
    assert network.ntp_check("n0", True).verdict == "ok"


def test_clock_offset_is_taken_at_the_round_trips_midpoint() -> None:
    offset = network.clock_offset(1000.5, sent=999.0, received=1000.0)
    assert offset == {"offset_s": 1.0, "uncertainty_s": 0.5}
    assert network.clock_offset(None, 1.0, 2.0) is None


def findings_for(mtu_n1: int, skew_s: float) -> dict[str, HostFindings]:
    key = "qwen2-5-7b-instruct replica 0"
    found = {}
    for host, rank, mtu, offset in (("n0", 0, 1400, 0.01), ("n1", 1, mtu_n1, 0.01 + skew_s)):
        findings = HostFindings(host)
        findings.facts["network"] = {
            "offset": {"offset_s": offset, "uncertainty_s": 0.02},
            "nodes": {key: {"rank": rank, "interface": "eth0", "mtu": mtu}},
        }
        found[host] = findings
    return found


def test_healthy_pair_passes_mtu_and_clock() -> None:
    rows = network.across(two_nodes(), findings_for(1400, 0.2))
    assert [(r.host, r.check, r.verdict) for r in rows] == [
        ("n1", "MTU qwen2-5-7b-instruct replica 0", "ok"),
        ("n1", "clock qwen2-5-7b-instruct replica 0", "ok"),
    ]


def test_mtu_mismatch_names_the_node_and_the_command() -> None:
    rows = network.across(two_nodes(), findings_for(9001, 0.0))
    row = only(rows, "MTU qwen2-5-7b-instruct replica 0")
    assert (row.host, row.verdict) == ("n1", "fail")
    assert (row.expected, row.found) == ("1400 (as n0 eth0)", "9001 on eth0")
    assert "`ip link set dev eth0 mtu 1400`" in row.fix


def test_clock_skew_beyond_a_second_fails() -> None:
    row = only(
        network.across(two_nodes(), findings_for(1400, 3.2)), "clock qwen2-5-7b-instruct replica 0"
    )
    assert (row.verdict, row.found) == ("fail", "+3.200 s (±0.040 s)")
    assert row.expected == "within 1 s of n0"
    assert "timedatectl set-ntp true" in row.fix


def efa(**changes: Any) -> facts.EfaFacts:
    base: facts.EfaFacts = {
        "instance_type": "p4d.24xlarge",
        "devices": {f"rdmap{n}s0": "efa" for n in range(4)},
        "plugins": ["/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so"],
        "ld_cache": [],
    }
    return {**base, **changes}  # type: ignore[typeddict-item]


PLUGIN_ENV = {"LD_LIBRARY_PATH": "/opt/amazon/ofi-nccl/lib", "FI_PROVIDER": "efa"}


def test_efa_is_reported_only_on_efa_instance_types() -> None:
    off_aws = facts.parse_efa(recorded("efa-no-devices.txt"))
    assert off_aws == {"instance_type": None, "devices": {}, "plugins": [], "ld_cache": []}
    assert network.efa_check("n0", off_aws, {}) is None
    assert network.efa_check("n0", efa(instance_type="g6e.xlarge", devices={}), {}) is None
    unknown_type = network.efa_check("n0", efa(instance_type=None), PLUGIN_ENV)
    assert unknown_type is not None and (unknown_type.expected, unknown_type.verdict) == (
        "EFA",
        "ok",
    )


def test_efa_used_when_devices_plugin_and_provider_are_there() -> None:
    row = network.efa_check("n0", efa(), PLUGIN_ENV)
    assert row is not None and row.verdict == "ok"
    assert row.found == "EFA on 4 devices via /opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so"


def test_efa_without_the_plugin_falls_back_to_sockets() -> None:
    row = network.efa_check("n0", efa(plugins=[]), PLUGIN_ENV)
    assert row is not None and row.verdict == "fail"
    assert row.found == "sockets: no aws-ofi-nccl plugin"
    assert row.fix == network.EFA_PLUGIN_FIX
    unreachable = network.efa_check("n0", efa(), {"FI_PROVIDER": "efa"})
    assert unreachable is not None and unreachable.verdict == "fail"
    assert unreachable.found == "sockets: /opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so"


def test_efa_instance_launched_without_efa_interfaces_fails() -> None:
    row = network.efa_check("n0", efa(devices={}), PLUGIN_ENV)
    assert row is not None and (row.verdict, row.found) == ("fail", "sockets: no EFA device")


def test_efa_without_fi_provider_warns() -> None:
    row = network.efa_check("n0", efa(plugins=[], ld_cache=["/usr/lib/libnccl-net.so"]), {})
    assert row is not None and (row.verdict, row.fix) == (
        "warn",
        "set FI_PROVIDER=efa in the units",
    )


def test_efa_facts_parse_imds_type_devices_and_plugins() -> None:
    parsed = facts.parse_efa(
        [
            "type=p5.48xlarge",
            "device=rdmap79s0 efa",
            "device=mlx5_0 mlx5_core",
            "plugin=/opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so",
            "ld=/opt/amazon/ofi-nccl/lib/libnccl-net.so",
        ]
    )
    assert parsed["instance_type"] == "p5.48xlarge"
    assert parsed["devices"] == {"rdmap79s0": "efa", "mlx5_0": "mlx5_core"}
    assert parsed["ld_cache"] == ["/opt/amazon/ofi-nccl/lib/libnccl-net.so"]
    assert facts.parse_efa(["type=<html>oops"])["instance_type"] is None


def test_no_torch_in_the_venv_is_a_skip_that_says_so() -> None:
    torch = facts.parse_torch(recorded("torch-missing.txt"))
    assert torch["version"] is None
    row = network.allreduce_check("n1", "m replica 0", torch, {})
    assert row.verdict == "skip"
    assert row.found == (
        "skipped: the vLLM venv has no torch (ModuleNotFoundError: No module named 'torch')"
    )
    no_venv = facts.parse_torch(recorded("torch-no-venv.txt"))
    assert "no such python" in network.allreduce_check("n1", "k", no_venv, {}).found


def test_allreduce_result_reports_bus_bandwidth() -> None:
    torch: facts.TorchFacts = {"version": "2.14.0", "cuda": True, "error": ""}
    result = {"ok": True, "busbw_gbps": 11.5, "backend": "nccl", "world": 2, "megabytes": 256}
    row = network.allreduce_check("n1", "m replica 0", torch, result)
    assert (row.verdict, row.found) == ("ok", "11.50 GB/s bus bandwidth (nccl, 2 nodes, 256 MiB)")
    failed = network.allreduce_check("n1", "k", torch, {"ok": False, "error": "timed out"})
    assert (failed.verdict, failed.found) == ("fail", "timed out")


def test_the_allreduce_program_reports_a_missing_torch_as_one_json_line() -> None:
    program = Path(network.__file__).parents[1] / "host_scripts" / "doctor_allreduce.py"
    spec = json.dumps(network.allreduce_spec(worker(), "gloo", {}))
    done = subprocess.run(
        [sys.executable, "-I", str(program), spec], capture_output=True, text=True, timeout=60
    )
    expected = json.loads((DATA / "allreduce-no-torch.json").read_text())
    assert json.loads(done.stdout) == expected


def test_allreduce_spec_meets_at_the_heads_master_port_with_the_units_nccl_env() -> None:
    unit_env = {"NCCL_SOCKET_IFNAME": "=eth0", "HF_HOME": "/x"}
    spec = network.allreduce_spec(two_nodes()["n1"].vllm[0], "nccl", unit_env)
    assert (spec["master"], spec["port"], spec["rank"], spec["world"]) == ("192.0.2.2", 29501, 1, 2)
    assert spec["env"] == {"NCCL_SOCKET_IFNAME": "=eth0"}
    ray = network.allreduce_spec(two_nodes("ray")["n1"].vllm[0], "gloo", {})
    assert ray["port"] == 19999


class RecordedHost:
    """A pyinfra host that answers each fact from recorded output, through the fact's own
    `process`; it notes the facts asked for."""

    def __init__(self, outputs: dict[type, Callable[[dict[str, Any]], list[str]]]) -> None:
        self.outputs = outputs
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def get_fact(self, fact: type, **kwargs: Any) -> Any:
        self.asked.append((fact.__name__, kwargs))
        return fact().process(self.outputs[fact](kwargs))


def recorded_host(
    reach: str, interfaces: str, active: bool, unit: list[str] | None = None
) -> RecordedHost:
    return RecordedHost(
        {
            facts.Interfaces: lambda _: [interfaces],
            facts.ClockReading: lambda _: recorded("clock-no-systemd.txt"),
            facts.UnitActive: lambda _: ["active" if active else "inactive"],
            facts.VenvTorch: lambda _: recorded("torch-missing.txt"),
            facts.EfaState: lambda _: recorded("efa-no-devices.txt"),
            facts.PortReach: lambda _: [reach],
            facts.UnitEnvironment: lambda _: unit or ["LoadState=not-found", "Environment="],
        }
    )


UNIT_SHOW = [
    "LoadState=loaded",
    'Environment=HOME=/var/lib/vllm "NCCL_SOCKET_IFNAME=sk-br" GLOO_SOCKET_IFNAME=sk-br',
]
"""`systemctl show -p LoadState -p Environment` of an installed unit (constructed, in systemd's
quoting) whose NCCL interface was written for another network."""


def test_unit_environment_parses_systemds_quoting() -> None:
    env = facts.parse_unit_environment(UNIT_SHOW)
    assert env == {
        "HOME": "/var/lib/vllm",
        "NCCL_SOCKET_IFNAME": "sk-br",
        "GLOO_SOCKET_IFNAME": "sk-br",
    }
    assert facts.parse_unit_environment(["LoadState=not-found", "Environment="]) is None


def test_gather_before_a_deploy_checks_what_the_deploy_will_write() -> None:
    plan = two_nodes()["n1"]
    text = ip_addr_of_n1()
    host = recorded_host("192.0.2.2 29501 1 bash: connect: Connection refused", text, False)
    findings = HostFindings("n1")
    network.gather(host, plan, findings)  # type: ignore[arg-type]
    nccl = only(findings.checks, "NCCL interface")
    assert nccl.verdict == "ok"
    assert nccl.found == "NCCL_SOCKET_IFNAME=eth0 selects eth0 (as the deploy will write it)"
    assert only(findings.checks, "reach n0 192.0.2.2:29501").verdict == "ok"


def test_gather_on_a_deployed_worker_from_recorded_outputs() -> None:
    plan = two_nodes()["n1"]
    text = ip_addr_of_n1()
    reach = "192.0.2.2 29501 1 bash: connect: Connection refused"
    host = recorded_host(reach, text, True, UNIT_SHOW)
    findings = HostFindings("n1")
    network.gather(host, plan, findings)  # type: ignore[arg-type]
    verdicts = {r.check: r.verdict for r in findings.checks}
    assert verdicts == {
        "clock synchronized (NTP)": "warn",
        "reach n0 192.0.2.2:29501": "fail",
        "NCCL interface": "fail",
        "all-reduce qwen2-5-7b-instruct replica 0": "skip",
    }
    node = findings.facts["network"]["nodes"]["qwen2-5-7b-instruct replica 0"]
    assert node == {"rank": 1, "interface": "eth0", "mtu": 1400}
    assert ("PortReach", {"targets": [("192.0.2.2", 29501)]}) in host.asked
    assert ("EfaState", {"ask_imds": False}) in host.asked


def test_gather_skips_hosts_without_multinode_replicas() -> None:
    fleet = Fleet(
        name="one",
        machines=[SshHost(name="g", address="192.0.2.9", gpu=Gpu(model="L4"))],
        serve=[Serve(model="qwen2.5-7b-instruct")],
        engine_api_key=SecretRef(env="ENGINE_KEY"),
    )
    host = RecordedHost({})
    findings = HostFindings("g")
    network.gather(host, plan_fleet(fleet).hosts["g"], findings)  # type: ignore[arg-type]
    assert (findings.checks, findings.facts, host.asked) == ([], {}, [])


def test_port_probe_command_quotes_addresses_and_checks_each_target() -> None:
    command = facts.PortReach().command([("192.0.2.2", 29501), ("fd00::1", 6379)])
    assert "exec 3<>/dev/tcp/192.0.2.2/29501" in command
    assert "exec 3<>/dev/tcp/fd00::1/6379" in command
    assert command.count("timeout 3 bash -c") == 2


def run_here(command: str) -> list[str]:
    """A fact's command as pyinfra runs it (`sh -c`), on this machine."""
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_fact_commands_run_in_a_real_shell_here() -> None:
    """Every command, run for real (this machine: no systemd as PID 1, no EFA, no torch)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    open_port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]  # bound, never listening: connections are refused
    try:
        targets = [("127.0.0.1", open_port), ("127.0.0.1", closed_port)]
        reach = facts.PortReach().process(run_here(facts.PortReach().command(targets)))
    finally:
        listener.close()
        closed.close()
    assert reach == {f"127.0.0.1:{open_port}": "open", f"127.0.0.1:{closed_port}": "refused"}
    names = [i["name"] for i in facts.Interfaces().process(run_here(facts.Interfaces().command()))]
    assert "lo" in names
    clock = facts.ClockReading().process(run_here(facts.ClockReading().command()))
    assert clock["epoch"] is not None and abs(clock["epoch"] - time.time()) < 30
    torch = facts.VenvTorch().process(run_here(facts.VenvTorch().command(sys.executable)))
    assert torch["version"] is None and "torch" in torch["error"]
    unit = "vllm-qwen2-5-7b-instruct.service"
    assert facts.UnitActive().process(run_here(facts.UnitActive().command(unit))) is False
    environment = run_here(facts.UnitEnvironment().command(unit))
    assert facts.UnitEnvironment().process(environment) is None
    efa = facts.EfaState().process(run_here(facts.EfaState().command()))
    assert network.efa_check("here", efa, {}) is None


def test_a_command_with_an_address_that_is_not_an_ip_literal_is_refused() -> None:
    with pytest.raises(ValueError):
        facts.PortReach().command([("192.0.2.2;reboot", 29501)])


@pytest.fixture
def local_host() -> Iterator[Any]:
    """pyinfra's `@local` host, connected, in a fresh State (as `servekit doctor --local` has)."""
    from pyinfra.api.config import Config
    from pyinfra.api.inventory import Inventory
    from pyinfra.api.state import State
    from pyinfra.context import ctx_host, ctx_state

    state = State()
    inventory = Inventory((["@local"], {}))  # type: ignore[no-untyped-call]
    with ctx_state.use(state):
        state.init(inventory, Config())  # type: ignore[no-untyped-call]
        host = inventory.get_host("@local")
        state.activate_host(host)
        with ctx_host.use(host):
            host.connect(raise_exceptions=True)
            yield host
            host.disconnect()


def test_gather_through_pyinfra_at_local(local_host: Any) -> None:
    """The worker's checks through pyinfra's own fact machinery on this machine: its cluster
    address is one this machine holds, the head's (127.0.0.1) master port is closed, no unit is
    installed (before a deploy), no torch in /opt/vllm/current."""
    here = facts.parse_interfaces(
        subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True).stdout
    )
    address = next(
        (a for i in here if i["up"] and i["name"] != "lo" for a in i["addresses"] if "." in a),
        "127.0.0.1",
    )
    plan = two_nodes()["n1"]
    instance = plan.vllm[0].model_copy(update={"head_address": "127.0.0.1", "master_port": 9})
    plan = plan.model_copy(update={"cluster_address": address, "vllm": [instance]})
    findings = HostFindings("n1")
    network.gather(local_host, plan, findings)
    rows = {r.check: r for r in findings.checks}
    assert rows["reach n0 127.0.0.1:9"].found == "refused"
    assert rows["reach n0 127.0.0.1:9"].verdict == "ok"  # nothing runs yet: refused is fine
    assert rows["NCCL interface"].verdict == "ok", rows["NCCL interface"]
    assert rows["all-reduce qwen2-5-7b-instruct replica 0"].verdict == "skip"
    node = findings.facts["network"]["nodes"]["qwen2-5-7b-instruct replica 0"]
    assert node["mtu"] == next(i["mtu"] for i in here if address in i["addresses"])
    assert abs(findings.facts["network"]["offset"]["offset_s"]) < 5


FAKE_TORCH = '''
"""A torch stand-in for the all-reduce program's control flow: it records the calls; the
collective itself does nothing (the real one needs torch and another node)."""
calls = []
float32 = "float32"
def ones(n, dtype=None, device=None):
    calls.append(["ones", n, device])
    return [n]
class cuda:
    @staticmethod
    def set_device(device): calls.append(["set_device", device])
    @staticmethod
    def synchronize(): pass
'''
FAKE_DISTRIBUTED = """
import json, os, time
from torch import calls
def init_process_group(**kw):
    calls.append(["init", kw["backend"], kw["init_method"], kw["rank"], kw["world_size"]])
def all_reduce(buffer): time.sleep(0.01)
def barrier(): pass
def destroy_process_group():
    calls.append(["env", os.environ.get("NCCL_SOCKET_IFNAME")])
    with open(os.environ["FAKE_TORCH_LOG"], "w") as f: json.dump(calls, f)
"""


def test_the_allreduce_program_meets_at_the_spec_and_reports_nccl_tests_bus_bandwidth(
    tmp_path: Path,
) -> None:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (tmp_path / "torch" / "distributed.py").write_text(FAKE_DISTRIBUTED)
    program = Path(network.__file__).parents[1] / "host_scripts" / "doctor_allreduce.py"
    unit_env = {"NCCL_SOCKET_IFNAME": "eth0"}
    spec = {**network.allreduce_spec(worker(), "nccl", unit_env), "megabytes": 4}
    log = tmp_path / "calls.json"
    done = subprocess.run(
        [sys.executable, str(program), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(tmp_path), "FAKE_TORCH_LOG": str(log), "PATH": "/usr/bin:/bin"},
    )
    result = json.loads(done.stdout)
    assert result["ok"], result
    assert result["busbw_gbps"] == pytest.approx(result["algbw_gbps"] * 2 * (2 - 1) / 2)
    assert result["algbw_gbps"] == pytest.approx(4 * 1024 * 1024 / result["seconds"] / 1e9)
    assert json.loads(log.read_text()) == [
        ["init", "nccl", "tcp://192.0.2.2:29501", 1, 2],
        ["set_device", "cuda:0"],
        ["ones", 4 * 1024 * 1024 // 4, "cuda:0"],
        ["env", "eth0"],
    ]


def test_a_ray_worker_counts_its_ray_node_unit_as_running() -> None:
    """On a Ray replica's worker the running unit is `ray-NAME`: with it active, the head's
    closed GCS port is a failure, not "before a deploy"."""
    plan = two_nodes("ray")["n1"]
    text = ip_addr_of_n1()
    host = recorded_host("192.0.2.2 6379 1 bash: connect: Connection refused", text, False)
    host.outputs[facts.UnitActive] = lambda kw: [
        "active" if kw["unit"].startswith("ray-") else "inactive"
    ]
    findings = HostFindings("n1")
    network.gather(host, plan, findings)  # type: ignore[arg-type]
    assert only(findings.checks, "reach n0 192.0.2.2:6379").verdict == "fail"
    asked = [kw["unit"] for name, kw in host.asked if name == "UnitActive"]
    assert asked == ["vllm-qwen2-5-7b-instruct.service", "ray-qwen2-5-7b-instruct.service"]


def test_a_background_rank_returns_at_once_and_the_last_rank_reports() -> None:
    fact = facts.AllReduceRun()
    sleeper = "import time; time.sleep(20)"
    started = time.monotonic()
    output = run_here(fact.command(sys.executable, sleeper, "{}", background=True))
    assert time.monotonic() - started < 10
    assert fact.process(output) == {"started": True}
    reporter = (
        'import json, sys; print("noise"); print(json.dumps({"ok": True, "spec": sys.argv[1]}))'
    )
    output = run_here(fact.command(sys.executable, reporter, '{"rank": 1}', background=False))
    assert fact.process(output) == {"ok": True, "spec": '{"rank": 1}'}
    assert fact.process(["Traceback: boom"]) == {"ok": False, "error": "Traceback: boom"}
