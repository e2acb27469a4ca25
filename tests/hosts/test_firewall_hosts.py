"""The firewall on test hosts: it cannot lock the operator out, and no engine runs without it.

Hosts: `a` (one fake A100, serves vLLM), `g` (gateway and monitoring). The tests run in order.
The last test adds `o` (an exposed Ollama, reached as the sudo user) and `x` (an outsider).

1. A lock-out the plan cannot see: the operator reaches `a` on port 2222, which the host forwards
   to its sshd on port 8000 (a port forward, as behind NAT). The firewall never matches the
   declared SSH port (2222), but it protects the engine port 8000, so the new rules cut SSH. The
   deploy's fresh SSH connection fails, the run fails saying so, and the host restores the
   previous rules (none: the table goes away) by itself 60 s after arming the rollback.
2. Without the forward the deploy converges and the rollback is disarmed. Then the firewall fails
   to load (a broken rules file): the vLLM unit, which requires it, does not start. The next
   deploy puts the rules back and starts it.
3. An exposed Ollama gets the same firewall: its port answers the gateway and the declared
   client, not another host.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostbench import BenchHost, FileServer, PackageIndex, run_pyinfra
from hostbench.plugin import HostFactory
from standins.build import build_ollama_release, build_vllm_wheel
from vllm_support import deploy, fake_gpus, http_from, put_model, secret, ssh_host, write_fleet

pytestmark = pytest.mark.hosts

SERVE = 'Serve(name="chat", model="llama-3.1-8b-instruct")'
FORWARDED_SSH = 2222
ROLLBACK = "servekit-firewall-rollback"


@dataclass
class Fleet:
    a: BenchHost
    g: BenchHost
    index: PackageIndex
    workdir: Path

    def inventory(self, name: str, **a_extra: str) -> Path:
        key = secret(self.workdir, "engine.key", "sk-fw-engine")
        clients = secret(self.workdir, "clients", "sk-client-1")
        fleet = f"""Fleet(
    name="fw",
    machines=[{ssh_host(self.a, **a_extra)},
              SshHost(name={self.g.name!r}, address={self.g.address!r}, ssh_user='root',
                      ssh_key={str(self.g.ssh_key)!r})],
    serve=[{SERVE}],
    gateway=Gateway(host={self.g.name!r}, api_keys=SecretRef(file={str(clients)!r})),
    monitoring=Monitoring(host={self.g.name!r}),
    engine_api_key=SecretRef(file={str(key)!r}),
    sources=Sources(python_index={self.index.url!r}, weights=LocalPath(path="/srv/models")),
)"""
        return write_fleet(self.workdir / name / "fleet.py", fleet)


@pytest.fixture(scope="module")
def fleet(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("firewall")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    a, g = test_hosts(2, fresh=True)
    fake_gpus(a)
    put_model(a, "meta-llama/Llama-3.1-8B-Instruct")
    yield Fleet(a, g, package_index, workdir)


def first_log_s(host: BenchHost, unit: str, text: str) -> float:
    """When (monotonic seconds) the journal of `unit` first said `text` (units that went
    inactive are unloaded, their timestamps with them; the journal keeps them)."""
    lines = host.run(f"journalctl -u {unit} -o json --no-pager").stdout.splitlines()
    for entry in map(json.loads, lines):
        if text in str(entry.get("MESSAGE", "")):
            return int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6
    raise AssertionError(f"{unit}: no {text!r} in its journal: {lines}")


def test_new_rules_that_cut_ssh_are_rolled_back_by_the_host(fleet: Fleet) -> None:
    a = fleet.a
    # sshd also on 8000, reached from outside on 2222 (nftables comes from Debian's mirror)
    a.run("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables",
          timeout=300)  # fmt: skip
    a.run("printf 'Port 22\\nPort 8000\\n' > /etc/ssh/sshd_config.d/fw-test.conf && "
          "systemctl restart ssh")  # fmt: skip
    a.run("nft add table ip fwtest && nft 'add chain ip fwtest pre { type nat hook prerouting "
          f"priority dstnat; }}' && nft add rule ip fwtest pre tcp dport {FORWARDED_SSH} "
          "redirect to :8000")  # fmt: skip
    run = deploy(fleet.inventory("forwarded", ssh_port=str(FORWARDED_SSH)))
    output = run.stdout + run.stderr
    assert run.returncode != 0, run
    assert "restores the previous firewall rules within 60 s" in output, run
    assert f"{a.address} port {FORWARDED_SSH}" in output, run
    assert "The rules cut SSH" in output, run
    print(next(line for line in output.splitlines() if "restores the previous" in line))
    # port 22 is no engine port: the bench still reaches the host and watches it roll back
    deadline = time.monotonic() + 90
    while "servekit" in a.run("nft list tables").stdout:
        assert time.monotonic() < deadline, "the host did not restore its previous rules"
        time.sleep(2)
    armed = first_log_s(a, f"{ROLLBACK}.timer", "Started")
    restored = first_log_s(a, f"{ROLLBACK}.service", "Starting")
    assert 55 <= restored - armed <= 62, (armed, restored)
    assert first_log_s(a, f"{ROLLBACK}.service", "Finished") >= restored  # it succeeded
    # the rules file went with them (there was none before), so a reboot cannot lock out either
    assert a.run("test -e /etc/servekit/firewall.nft", check=False).returncode != 0
    # and the operator gets in through the forward again (sshd's banner, from this machine)
    with socket.create_connection((a.address, FORWARDED_SSH), 5) as connection:
        assert connection.recv(64).startswith(b"SSH-2.0-")
    # the vLLM unit was never started unprotected
    assert a.run("systemctl is-active vllm-chat", check=False).stdout.strip() != "active"
    a.run("nft delete table ip fwtest && rm /etc/ssh/sshd_config.d/fw-test.conf && "
          "systemctl restart ssh")  # fmt: skip


def test_an_engine_does_not_start_when_the_firewall_fails_to_load(fleet: Fleet) -> None:
    a, g = fleet.a, fleet.g
    inventory = fleet.inventory("plain")
    deploy(inventory).check()
    assert a.run("systemctl is-active vllm-chat").stdout.strip() == "active"
    assert a.run(f"systemctl is-active {ROLLBACK}.timer", check=False).stdout.strip() != "active"
    assert http_from(g, f"http://{a.address}:8000/health") == "200"
    unit = a.run("systemctl cat vllm-chat").stdout
    assert "Requires=servekit-firewall.service" in unit

    # as at boot with a rules file nft refuses: the firewall fails, so does the engine
    a.run("systemctl stop servekit-firewall")  # stops what requires it, too
    assert a.run("systemctl is-active vllm-chat", check=False).stdout.strip() != "active"
    a.run("echo 'table inet servekit { oops' > /etc/servekit/firewall.nft")
    started = a.run("systemctl start vllm-chat", check=False)
    assert started.returncode != 0
    assert a.run("systemctl is-active vllm-chat", check=False).stdout.strip() != "active"
    assert a.run("systemctl is-failed servekit-firewall", check=False).stdout.strip() == "failed"
    assert "servekit" not in a.run("nft list tables").stdout
    assert http_from(g, f"http://{a.address}:8000/health") == "ConnectionRefusedError"

    # the next deploy writes the rules again, loads them (confirmed) and starts the engine
    deploy(inventory).check()
    assert a.run("systemctl is-active vllm-chat").stdout.strip() == "active"
    assert a.run(f"systemctl is-active {ROLLBACK}.timer", check=False).stdout.strip() != "active"
    assert "servekit" in a.run("nft list tables").stdout
    assert deploy(inventory).check().changes() == {}


OLLAMA_DEPLOY = Path(__file__).resolve().parents[2] / "deploys" / "ollama.py"
OLLAMA_VERSION = "0.32.3"


def test_an_exposed_ollama_answers_only_the_gateway_and_its_declared_clients(
    fleet: Fleet,
    test_hosts: HostFactory,
    file_server: FileServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = tmp_path_factory.mktemp("ollama-releases")
    build_ollama_release(out, OLLAMA_VERSION)
    mirror = file_server.add_tree(out, "ollama-releases")
    o, x = test_hosts(2, fresh=True)
    client, gateway = fleet.a, fleet.g  # `a` is declared as a client here, `x` is not
    inventory = fleet.workdir / "ollama" / "fleet.py"
    keys = secret(fleet.workdir, "clients", "sk-client-1")
    fleet_source = f"""Fleet(
    name="exposed",
    machines=[SshHost(name={o.name!r}, address={o.address!r}, ssh_user="debian",
                      ssh_key={str(o.ssh_key)!r}),
              SshHost(name={gateway.name!r}, address={gateway.address!r}, ssh_user="root",
                      ssh_key={str(gateway.ssh_key)!r})],
    serve=[Serve(model="llama3.2:1b", engine="ollama", hosts=[{o.name!r}])],
    gateway=Gateway(host={gateway.name!r}, api_keys=SecretRef(file={str(keys)!r})),
    ollama=OllamaSettings(expose=True, clients=[{client.address!r}]),
    sources=Sources(ollama_releases={mirror!r}),
    versions=Versions(ollama={OLLAMA_VERSION!r}),
)"""
    write_fleet(inventory, fleet_source)
    run = run_pyinfra(inventory, OLLAMA_DEPLOY, timeout=900).check()
    assert "Ollama | Load the servekit firewall" in run.changes(), run
    url = f"http://{o.address}:11434/api/version"
    assert http_from(gateway, url) == "200"
    assert http_from(client, url) == "200"
    assert http_from(x, url) == "ConnectionRefusedError"
    assert o.run(f"curl -fsS --max-time 5 http://{o.address}:11434/api/version").returncode == 0
    unit = o.run("systemctl cat ollama").stdout
    assert "Requires=servekit-firewall.service" in unit
    assert o.run(f"systemctl is-active {ROLLBACK}.timer", check=False).stdout.strip() != "active"
    assert run_pyinfra(inventory, OLLAMA_DEPLOY, timeout=900).check().changes() == {}
