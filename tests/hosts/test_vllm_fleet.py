"""The vLLM deploy on a small fleet of test hosts over real SSH and a real network: two replicas
on two hosts behind a gateway host (the firewall admits the gateway and turns others away), then
one replica across both hosts in vLLM's native multi-node mode (the headless worker joins the
head; the head answers only then). Stand-in vLLM from the local index, weights from a local path.

Hosts: `a`, `b` (one fake A100 each), `g` (gateway and monitoring, no GPU), `o` (outside the
fleet). The tests run in order on the same hosts.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostbench import BenchHost, PackageIndex
from hostbench.plugin import HostFactory
from standins.build import build_vllm_wheel
from vllm_support import (
    deploy,
    fake_gpus,
    http_from,
    put_model,
    secret,
    ssh_host,
    unit_show,
    write_fleet,
)

pytestmark = pytest.mark.hosts


@dataclass
class Fleet:
    a: BenchHost
    b: BenchHost
    g: BenchHost
    o: BenchHost
    index: PackageIndex
    workdir: Path

    def inventory(self, serve: str) -> Path:
        key = secret(self.workdir, "engine.key", "sk-fleet-engine")
        clients = secret(self.workdir, "clients", "sk-client-1")
        fleet = f"""Fleet(
    name="fleet",
    machines=[{ssh_host(self.a)}, {ssh_host(self.b)},
              SshHost(name={self.g.name!r}, address={self.g.address!r}, ssh_user='root',
                      ssh_key={str(self.g.ssh_key)!r})],
    serve=[{serve}],
    gateway=Gateway(host={self.g.name!r}, api_keys=SecretRef(file={str(clients)!r})),
    monitoring=Monitoring(host={self.g.name!r}),
    engine_api_key=SecretRef(file={str(key)!r}),
    sources=Sources(python_index={self.index.url!r}, weights=LocalPath(path="/srv/models")),
)"""
        return write_fleet(self.workdir / "inventory" / "fleet.py", fleet)


@pytest.fixture(scope="module")
def fleet(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("vllm-fleet")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    a, b, g, o = test_hosts(4)
    for host in (a, b):
        fake_gpus(host)
        put_model(host, "meta-llama/Llama-3.1-8B-Instruct")
    yield Fleet(a, b, g, o, package_index, workdir)


REPLICAS = 'Serve(name="chat", model="llama-3.1-8b-instruct")'
ACROSS = 'Serve(name="chat", model="llama-3.1-8b-instruct", nodes_per_replica=2)'


def test_two_replicas_on_two_hosts(fleet: Fleet) -> None:
    run = deploy(fleet.inventory(REPLICAS)).check()
    assert set(run.changes()["vLLM | Start vLLM servers (wave 0)"]) == {fleet.a.name, fleet.b.name}
    for host in (fleet.a, fleet.b):
        # bound to the address the gateway reaches, answering the gateway host
        assert http_from(fleet.g, f"http://{host.address}:8000/health") == "200"
        assert http_from(fleet.g, f"http://{host.address}:8000/v1/models") == "401"
        assert unit_show(host, "servekit-firewall", "ActiveState") == "active"
    second = deploy(fleet.inventory(REPLICAS)).check()
    assert second.changes() == {}, second


def test_firewall_turns_away_hosts_it_does_not_admit(fleet: Fleet) -> None:
    for host in (fleet.a, fleet.b):
        for path in ("/health", "/metrics", "/v1/models"):
            assert http_from(fleet.o, f"http://{host.address}:8000{path}") == (
                "ConnectionRefusedError"
            )
        assert http_from(fleet.g, f"http://{host.address}:8000/metrics") == "200"
        # the host itself still reaches its engine (the deploy's health checks do)
        assert http_from(host, f"http://{host.address}:8000/health") == "200"
    # other ports of the host are not the firewall's business
    ssh = f"import socket; socket.create_connection(('{fleet.a.address}', 22), 5)"
    assert fleet.o.run(f"python3 -c {shlex.quote(ssh)}").returncode == 0


def test_one_replica_across_two_nodes(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    run = deploy(fleet.inventory(ACROSS)).check()
    changed = run.changes()
    assert b.name in changed["vLLM | Start vLLM workers (wave 1)"], run
    assert a.name in changed["vLLM | Start vLLM servers (wave 1)"], run
    head = a.run("cat /etc/vllm/chat.yaml").stdout
    worker = b.run("cat /etc/vllm/chat.yaml").stdout
    assert "nnodes: 2" in head and "node-rank: 0" in head and "headless" not in head
    assert "node-rank: 1" in worker and "headless: true" in worker
    assert f'master-addr: "{a.address}"' in worker
    unit = b.run("cat /etc/systemd/system/vllm-chat.service").stdout
    assert "Environment=NCCL_SOCKET_IFNAME=host0" in unit  # the interface holding its address
    assert f"Environment=VLLM_HOST_IP={b.address}" in unit
    journal = a.run("journalctl -u vllm-chat --no-pager -o cat").stdout
    assert "Application startup complete." in journal
    worker_log = b.run("journalctl -u vllm-chat --no-pager -o cat").stdout
    assert "headless worker node rank 1" in worker_log
    assert http_from(fleet.g, f"http://{a.address}:8000/health") == "200"
    assert http_from(fleet.o, f"http://{a.address}:29501/") == "ConnectionRefusedError"
    rules = a.run("nft list table inet servekit").stdout
    assert b.address in rules and "29501" in rules
    assert deploy(fleet.inventory(ACROSS)).check().changes() == {}
