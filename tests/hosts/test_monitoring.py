"""deploys/monitoring.py on a fleet of test hosts over real SSH: two stand-in vLLM replicas on `a`
and `b` (fake GPUs, DCGM declared: the stand-in DCGM exporter under NVIDIA's unit), HAProxy on `g`,
and Prometheus, Alertmanager and the blackbox exporter from the Debian mirror on `m`. The firewall,
vLLM, gateway and monitoring deploys run as a user runs them; then Prometheus (real) must see
every declared target up, a stopped replica must fire EngineDown in Alertmanager within the rule's
`for` plus two scrape intervals and resolve once restarted, and an Xid and an ECC error on the
stand-in DCGM exporter must fire their alerts. The tests run in order on the same hosts.
"""

from __future__ import annotations

import contextlib
import json
import math
import runpy
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hostbench import BenchHost, PackageIndex, PyinfraRun, run_pyinfra
from hostbench.plugin import HostFactory
from standins.build import build_vllm_wheel
from vllm_support import ROOT, fake_gpus, http_from, put_model, secret, ssh_host, write_fleet

from servekit.placement import plan_fleet
from servekit.status.prometheus import replica_queries

pytestmark = pytest.mark.hosts

DEPLOYS = [
    ROOT / "deploys" / f"{name}.py" for name in ("firewall", "vllm", "gateway", "monitoring")
]
STANDIN_DCGM = Path(__file__).parents[1] / "standins" / "dcgm_exporter.py"
SCRAPE_S = 2
ENGINE_DOWN_FOR_S = 60  # servekit.monitoring.rules: EngineDown holds 1m
KEYS = "alice sk-alice-0123456789abcdef\n"
# NVIDIA's unit, as `datacenter-gpu-manager-exporter` ships it (packaging/config-files/systemd/
# nvidia-dcgm-exporter.service in https://github.com/NVIDIA/dcgm-exporter), logging to the journal
DCGM_UNIT = """[Unit]
Description=NVIDIA DCGM-exporter service
[Service]
User=root
ExecStart=/usr/bin/dcgm-exporter -f /etc/dcgm-exporter/default-counters.csv
Restart=on-abort
[Install]
WantedBy=multi-user.target
"""
FETCH = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
    print(json.dumps(json.load(response)))
"""


@dataclass
class Fleet:
    a: BenchHost
    b: BenchHost
    g: BenchHost
    m: BenchHost
    index: PackageIndex
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)

    def source(self) -> str:
        keys = secret(self.workdir, "clients.keys", KEYS.strip())
        engine = secret(self.workdir, "engine.key", "sk-mon-engine-0123456789")
        plain = ", ".join(
            f"SshHost(name={h.name!r}, address={h.address!r}, ssh_user='root', "
            f"ssh_key={str(h.ssh_key)!r})"
            for h in (self.g, self.m)
        )
        return f"""Fleet(
    name="mon",
    machines=[{ssh_host(self.a)}, {ssh_host(self.b)}, {plain}],
    serve=[Serve(name="chat", model="llama-3.1-8b-instruct", replicas=2, served_names=["chat"])],
    gateway=Gateway(host={self.g.name!r}, api_keys=SecretRef(file={str(keys)!r})),
    monitoring=Monitoring(host={self.m.name!r}, scrape_interval="{SCRAPE_S}s"),
    gpu_setup=GpuSetup(dcgm=True),
    engine_api_key=SecretRef(file={str(engine)!r}),
    sources=Sources(python_index={self.index.url!r}, weights=LocalPath(path="/srv/models")),
)"""

    def inventory(self) -> Path:
        return write_fleet(self.workdir / "inventory" / "mon.py", self.source())

    def deploy(self, *deploys: Path) -> PyinfraRun:
        return run_pyinfra(self.inventory(), *(deploys or DEPLOYS), timeout=1500)

    def query(self, promql: str) -> list[dict[str, Any]]:
        return query(self.m, promql)

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """Alertmanager's active alerts named `name` (API v2)."""
        found: list[dict[str, Any]] = get_json(self.m, "http://127.0.0.1:9093/api/v2/alerts")
        return [a for a in found if a["labels"].get("alertname") == name]


def get_json(host: BenchHost, url: str) -> Any:
    """JSON of a GET run on `host` (Prometheus and Alertmanager answer the monitoring host's
    loopback only)."""
    command = f"python3 -c {shlex.quote(FETCH)} {shlex.quote(url)}"
    return json.loads(host.run(command, timeout=30).stdout)


def query(host: BenchHost, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    """Prometheus's answer to an instant query (at time `at`, else now), asked on the monitoring
    host `host`."""
    when = "" if at is None else f"&time={at}"
    url = "http://127.0.0.1:9090/api/v1/query?query=" + quote(promql, safe="") + when
    answer = get_json(host, url)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def declared_targets(inventory: Path, monitoring: str) -> set[tuple[str, str]]:
    """(job, host) of every target the inventory's plan declares, and Prometheus's own three."""
    plan = plan_fleet(runpy.run_path(str(inventory))["fleet"]).hosts[monitoring]
    assert plan.monitoring is not None
    own = {(job, monitoring) for job in ("prometheus", "alertmanager", "blackbox")}
    return own | {(j.job, t.labels["host"]) for j in plan.monitoring.jobs for t in j.targets}


def all_up(host: BenchHost, declared: set[tuple[str, str]]) -> bool:
    """Whether Prometheus on `host` has exactly the declared targets, every one up."""
    up = query(host, "up")
    seen = {(s["metric"]["job"], s["metric"].get("host", "")) for s in up}
    return seen == declared and all(s["value"][1] == "1" for s in up)


def wait_until(check: Any, timeout: float, what: str, step: float = 1.0) -> float:
    """Seconds until `check()` is truthy; AssertionError after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


def install_standin_dcgm(host: BenchHost) -> None:
    """The stand-in exporter where NVIDIA's package puts its binary and unit (enabled, not
    started: deploys/gpu.py enables it; the monitoring deploy's drop-in starts it)."""
    host.run("cat > /usr/bin/dcgm-exporter && chmod 755 /usr/bin/dcgm-exporter",
             stdin=STANDIN_DCGM.read_text())  # fmt: skip
    host.run("cat > /lib/systemd/system/nvidia-dcgm-exporter.service && systemctl daemon-reload "
             "&& systemctl enable nvidia-dcgm-exporter.service", stdin=DCGM_UNIT)  # fmt: skip


@pytest.fixture(scope="module")
def fleet(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("monitoring")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    a, b, g, m = test_hosts(4)
    for host in (a, b):
        fake_gpus(host)
        put_model(host, "meta-llama/Llama-3.1-8B-Instruct")
        install_standin_dcgm(host)
    yield Fleet(a, b, g, m, package_index, workdir)


def test_the_deploys_converge_and_every_declared_target_is_up(fleet: Fleet) -> None:
    started = time.monotonic()
    run = fleet.deploy().check()
    fleet.timings["deploy_s"] = time.monotonic() - started
    changed = run.changes()
    assert set(changed["servekit monitoring | Install the node exporter"]) == {
        h.name for h in (fleet.a, fleet.b, fleet.g, fleet.m)
    }
    declared = declared_targets(fleet.inventory(), fleet.m.name)
    assert {job for job, _ in declared} == {
        "prometheus", "alertmanager", "blackbox", "vllm", "node", "gateway", "dcgm"
    }  # fmt: skip

    waited = wait_until(lambda: all_up(fleet.m, declared), 60, "every declared target up")
    fleet.timings["all_up_after_deploy_s"] = waited
    up = fleet.query("up")
    assert len(up) == len(declared) == 12, up
    for sample in up:
        assert sample["metric"]["fleet"] == "mon"


def test_exporters_answer_the_monitoring_host_only(fleet: Fleet) -> None:
    for host in (fleet.a, fleet.b):
        for port in (9100, 9400):
            url = f"http://{host.address}:{port}/metrics"
            assert http_from(fleet.m, url) == "200", url
            assert http_from(fleet.g, url) == "ConnectionRefusedError", url  # TCP reset
    assert http_from(fleet.m, f"http://{fleet.g.address}:9100/metrics") == "200"
    assert http_from(fleet.a, f"http://{fleet.g.address}:9100/metrics") == "ConnectionRefusedError"
    # on the monitoring host itself everything listens on loopback
    listening = fleet.m.run("ss -Hltn").stdout
    for port in (9090, 9093, 9115, 9100):
        assert f"127.0.0.1:{port} " in listening, listening


def test_a_stopped_replica_fires_engine_down_and_resolves_when_restarted(fleet: Fleet) -> None:
    assert fleet.alerts("EngineDown") == []
    fleet.a.run("systemctl stop vllm-chat.service")
    bound = ENGINE_DOWN_FOR_S + 2 * SCRAPE_S + SCRAPE_S + 5  # + one evaluation, SSH polling
    try:
        waited = wait_until(lambda: fleet.alerts("EngineDown"), bound, "EngineDown in Alertmanager")
        fleet.timings["engine_down_fired_s"] = waited
        [alert] = fleet.alerts("EngineDown")
        assert alert["labels"]["host"] == fleet.a.name and alert["labels"]["replica"] == "0"
        assert alert["labels"]["unit"] == "vllm-chat" and alert["status"]["state"] == "active"
        assert "systemctl status vllm-chat" in alert["annotations"]["summary"]
    finally:
        fleet.a.run("systemctl start vllm-chat.service")
    resolved = wait_until(lambda: not fleet.alerts("EngineDown"), 120, "EngineDown resolved")
    fleet.timings["engine_down_resolved_s"] = resolved


def test_xid_and_ecc_errors_on_a_gpu_fire_their_alerts(fleet: Fleet) -> None:
    assert fleet.alerts("GpuXidError") == [] and fleet.alerts("GpuEccDoubleBit") == []
    errors = {"DCGM_FI_DEV_XID_ERRORS": 79, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 2}
    fleet.b.run("cat > /etc/dcgm-standin.json", stdin=json.dumps(errors))
    try:
        for name in ("GpuXidError", "GpuEccDoubleBit"):
            waited = wait_until(lambda n=name: fleet.alerts(n), 30, f"{name} in Alertmanager")
            fleet.timings[f"{name}_fired_s"] = waited
            [alert] = fleet.alerts(name)
            assert alert["labels"]["host"] == fleet.b.name and alert["labels"]["gpu"] == "0"
        [xid] = fleet.alerts("GpuXidError")
        assert "reported Xid 79" in xid["annotations"]["summary"]
        assert fleet.alerts("GpuXidError")[0]["labels"]["severity"] == "critical"
    finally:
        fleet.b.run("rm -f /etc/dcgm-standin.json")
    wait_until(lambda: not fleet.alerts("GpuXidError"), 60, "GpuXidError resolved")
    assert fleet.alerts("NodeDown") == [] and fleet.alerts("ExporterDown") == []


@contextlib.contextmanager
def tunnel(host: BenchHost, remote_port: int) -> Iterator[str]:
    """`ssh -N -L` to a port on `host`'s loopback, as the README tells users; its local URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    *options, destination, _command = host.ssh_argv("true")
    spec = f"{port}:127.0.0.1:{remote_port}"
    process = subprocess.Popen([*options, "-N", "-L", spec, destination])
    try:
        wait_until(lambda: _accepts(port), 20, "the SSH tunnel", step=0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def servekit_status(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    servekit = Path(sys.executable).parent / "servekit"
    return subprocess.run([str(servekit), "status", str(inventory), "--once", "--json", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_servekit_status_shows_prometheus_own_answers_and_names_a_stopped_replica(
    fleet: Fleet,
) -> None:
    """`servekit status` through an SSH tunnel to the monitoring host's Prometheus: each
    replica's values are Prometheus' own answers at the same time; a stopped replica exits 1,
    named."""
    with tunnel(fleet.m, 9090) as url:
        done = servekit_status(fleet.inventory(), "--prometheus", url)
        assert done.returncode == 0, done.stdout + done.stderr
        status = json.loads(done.stdout)
        assert status["source"] == "prometheus" and status["down"] == []
        rows = {(r["host"], str(r["replica"])): r for r in status["replicas"]}
        assert {host for host, _ in rows} == {fleet.a.name, fleet.b.name}
        queries = replica_queries("mon", f"{int(status['window_s'])}s")
        compared = 0
        for name, expr in queries.items():
            answers = {
                (r["metric"]["host"], r["metric"]["replica"]): float(r["value"][1])
                for r in query(fleet.m, expr, at=status["at"])
            }
            if name == "up":
                assert answers == {key: 1.0 for key in rows}
                continue
            for key, value in answers.items():
                if math.isfinite(value):
                    assert rows[key][name] == value, (name, key)
                    compared += 1
        assert compared >= 2 * 2  # at least KV cache % and waiting requests of both replicas
        fleet.b.run("systemctl stop vllm-chat.service")
        try:
            stopped = f'up{{job="vllm",host={json.dumps(fleet.b.name)}}} == 0'
            wait_until(lambda: fleet.query(stopped), 30, "Prometheus sees the replica down")
            down = servekit_status(fleet.inventory(), "--prometheus", url)
        finally:
            fleet.b.run("systemctl start vllm-chat.service")
    assert down.returncode == 1, down.stdout + down.stderr
    named = json.loads(down.stdout)["down"]
    assert len(named) == 1 and fleet.b.name in named[0] and "vllm-chat" in named[0]
    assert fleet.b.name in down.stderr
    wait_until(lambda: all_up(fleet.m, declared_targets(fleet.inventory(), fleet.m.name)), 60,
               "every target up again")  # fmt: skip


def test_a_second_run_changes_nothing(fleet: Fleet) -> None:
    run = fleet.deploy(ROOT / "deploys" / "monitoring.py").check()
    assert run.changes() == {}, run
    print("monitoring host test timings:", json.dumps(fleet.timings, indent=1))
