"""The exporters on every host of a fleet with monitoring, from the plan: where the node and DCGM
exporters listen (where the monitoring host reaches each host; loopback on the monitoring host),
the firewall that admits only the monitoring host to them, NVIDIA's DCGM exporter pointed at
servekit's counters by a drop-in, and Ollama APIs probed through Debian's blackbox exporter
(the relabelled job checked by promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from servekit.firewall import firewall_lines, render_rules
from servekit.hostplan import HostPlan
from servekit.monitoring import MONITORING, MonitoringLayout, monitoring_files
from servekit.monitoring.exporters import exporter_files
from servekit.monitoring.metrics import counter_fields, dcgm_counters
from servekit.monitoring.prometheus import prometheus_config
from servekit.placement import plan_fleet
from servekit.spec import (
    Fleet,
    Gateway,
    Gpu,
    GpuSetup,
    LocalHost,
    Monitoring,
    SecretRef,
    Serve,
    SshHost,
)


def mixed_fleet(**changes: object) -> dict[str, HostPlan]:
    """Two vLLM GPU hosts (DCGM), a gateway, the monitoring host, two Ollama boxes behind the
    gateway, and a Mac laptop with Ollama on loopback."""
    declared = {
        "name": "team",
        "machines": [
            SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
            SshHost(
                name="g2", address="g2.example.com", cluster_address="10.0.0.2", gpu=Gpu(model="L4")
            ),
            SshHost(name="gw", address="10.0.0.9"),
            SshHost(name="mon", address="10.0.0.8"),
            SshHost(name="o1", address="10.0.0.11"),
            SshHost(name="o2", address="10.0.0.12"),
        ],
        "serve": [
            Serve(model="qwen2.5-7b-instruct", hosts=["g1", "g2"]),
            Serve(model="llama3.1:8b", engine="ollama", hosts=["o1", "o2"]),
        ],
        "gateway": Gateway(host="gw", api_keys=SecretRef(env="CLIENT_KEYS")),
        "monitoring": Monitoring(host="mon"),
        "gpu_setup": GpuSetup(dcgm=True),
        "engine_api_key": SecretRef(env="ENGINE_KEY"),
    }
    return plan_fleet(Fleet.model_validate(declared | changes)).hosts


def files_of(plan: HostPlan) -> dict[str, str]:
    return {f.path: f.content for f in exporter_files(plan)}


def test_every_linux_host_runs_a_node_exporter_where_the_monitoring_host_reaches_it() -> None:
    hosts = mixed_fleet()
    listen = {name: plan.exporters.listen_address for name, plan in hosts.items() if plan.exporters}
    assert listen == {
        "g1": "10.0.0.1",
        "g2": "10.0.0.2",  # the cluster address, not the SSH address
        "gw": "10.0.0.9",
        "mon": "127.0.0.1",  # Prometheus beside it
        "o1": "10.0.0.11",
        "o2": "10.0.0.12",
    }
    args = files_of(hosts["g2"])[MONITORING.node_exporter_defaults].splitlines()[-1]
    assert args.startswith('ARGS="--web.listen-address=10.0.0.2:9100 --collector.systemd ')
    assert "--collector.systemd.unit-include=(nvidia-fabricmanager|" in args


def test_without_monitoring_no_host_gets_exporters() -> None:
    hosts = mixed_fleet(monitoring=None)
    assert all(plan.exporters is None for plan in hosts.values())
    assert all(exporter_files(plan) == [] for plan in hosts.values())
    assert all(plan.firewall is None or not plan.firewall.exporter_ports for plan in hosts.values())


def test_a_mac_gets_no_exporter_and_no_node_target() -> None:
    hosts = mixed_fleet(
        machines=[
            SshHost(name="g1", address="10.0.0.1", gpu=Gpu(model="L4")),
            SshHost(name="mon", address="10.0.0.8"),
            LocalHost(name="mac", os="macos", gpu=Gpu(model="apple-m2-max", memory_gib=32)),
        ],
        serve=[
            Serve(model="qwen2.5-7b-instruct", hosts=["g1"]),
            Serve(model="llama3.1:8b", engine="ollama", hosts=["mac"]),
        ],
        gateway=None,
    )
    assert hosts["mac"].exporters is None and hosts["mac"].firewall is None
    jobs = {j.job: j for j in hosts["mon"].monitoring.jobs}  # type: ignore[union-attr]
    assert {t.labels["host"] for t in jobs["node"].targets} == {"g1", "mon"}
    assert "ollama" not in jobs  # its Ollama listens on the Mac's loopback: nothing reaches it


def test_only_dcgm_hosts_get_the_dcgm_drop_in_listening_on_their_address() -> None:
    hosts = mixed_fleet()
    g1 = files_of(hosts["g1"])
    dropin = g1[MONITORING.dcgm_dropin]
    assert "[Service]\nExecStart=\nExecStart=/usr/bin/dcgm-exporter " in dropin
    assert dropin.rstrip().endswith(f"-f {MONITORING.dcgm_counters} -a 10.0.0.1:9400")
    assert counter_fields(g1[MONITORING.dcgm_counters]) == counter_fields(dcgm_counters())
    for name in ("gw", "mon", "o1"):
        assert MONITORING.dcgm_dropin not in files_of(hosts[name]), name
    assert MONITORING.dcgm_dropin not in files_of(mixed_fleet(gpu_setup=GpuSetup())["g1"])


def test_systemd_accepts_the_dcgm_drop_in(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is needed (Debian's systemd package)")
    layout = MonitoringLayout.under(str(tmp_path))
    files = {f.path: f.content for f in exporter_files(mixed_fleet()["g1"], layout)}
    unit = tmp_path / "nvidia-dcgm-exporter.service"
    # NVIDIA's unit as its package ships it (packaging/config-files/systemd in dcgm-exporter)
    unit.write_text(
        "[Unit]\nDescription=NVIDIA DCGM-exporter service\n[Service]\nUser=root\n"
        "ExecStart=/usr/bin/dcgm-exporter -f /etc/dcgm-exporter/default-counters.csv\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    dropin_dir = tmp_path / "nvidia-dcgm-exporter.service.d"
    dropin_dir.mkdir(exist_ok=True)
    (dropin_dir / "servekit.conf").write_text(files[layout.dcgm_dropin])
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify checks the unit's syntax (the binary itself is missing here: said, not refused)
    assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr, result.stderr


def test_the_firewall_admits_only_the_monitoring_host_to_the_exporters() -> None:
    hosts = mixed_fleet()
    g1 = hosts["g1"]
    assert g1.firewall is not None
    assert g1.firewall.exporter_ports == [9100, 9400] and g1.firewall.monitoring == ["10.0.0.8"]
    assert "10.0.0.9" in g1.firewall.admitted  # the gateway reaches the engine port...
    text = render_rules(g1)
    body = text.split("table inet servekit {}")[1]
    assert "elements = { 10.0.0.8 }" in body.split("set monitoring4 {")[1].split("\n\t}")[0]
    assert "elements = { 9100, 9400 }" in body.split("set exporters {")[1].split("\n\t}")[0]
    assert "ip saddr @monitoring4 tcp dport @exporters accept" in body
    assert "tcp dport @exporters reject with tcp reset" in body
    # ...never the exporters: the gateway is not in the monitoring set
    assert "10.0.0.9" not in body.split("set monitoring4 {")[1].split("\n\t}")[0]
    gw = hosts["gw"]  # a gateway-only host gets a firewall for its node exporter alone
    assert gw.firewall is not None and gw.firewall.exporter_ports == [9100]
    assert gw.firewall.engine_ports == []
    assert hosts["mon"].firewall is None  # its exporter listens on loopback
    lines = "\n".join(firewall_lines(type("P", (), {"hosts": hosts})()))  # type: ignore[arg-type]
    assert "firewall gw: ports none admit loopback" in lines
    assert "exporters 9100 admit only 10.0.0.8" in lines


def test_ollama_apis_are_probed_through_the_blackbox_exporter(tmp_path: Path) -> None:
    hosts = mixed_fleet()
    mon = hosts["mon"]
    config = yaml.safe_load(prometheus_config(mon))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ollama = jobs["ollama"]
    assert ollama["metrics_path"] == "/probe" and ollama["params"] == {"module": ["ollama"]}
    targets = {s["targets"][0]: s["labels"] for s in ollama["static_configs"]}
    assert set(targets) == {"http://10.0.0.11:11434/", "http://10.0.0.12:11434/"}
    labels = targets["http://10.0.0.11:11434/"]
    assert labels == {
        "fleet": "team",
        "host": "o1",
        "role": "ollama",
        "model": "llama-3-1-8b-instruct",
        "replica": "0",
    }
    assert ollama["relabel_configs"][-1] == {
        "target_label": "__address__",
        "replacement": "127.0.0.1:9115",
    }
    assert jobs["blackbox"]["static_configs"][0]["targets"] == ["127.0.0.1:9115"]
    layout = MonitoringLayout.under(str(tmp_path))
    for rendered in monitoring_files(mon, None, layout):
        Path(rendered.path).parent.mkdir(parents=True, exist_ok=True)
        Path(rendered.path).write_text(rendered.content)
    promtool = shutil.which("promtool")
    assert promtool, "install prometheus (promtool)"
    result = subprocess.run(
        [promtool, "check", "config", layout.prometheus_config],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_blackbox_exporter_accepts_servekits_modules(tmp_path: Path) -> None:
    binary = shutil.which("prometheus-blackbox-exporter")
    assert binary, "install prometheus-blackbox-exporter (apt-get; .ci/run does)"
    layout = MonitoringLayout.under(str(tmp_path))
    [config] = [
        f
        for f in monitoring_files(mixed_fleet()["mon"], None, layout)
        if f.path == layout.blackbox_config
    ]
    Path(config.path).write_text(config.content)
    argv = [binary, "--config.check", f"--config.file={config.path}"]
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    Path(config.path).write_text(config.content.replace("timeout:", "timeout_typo:"))
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0
