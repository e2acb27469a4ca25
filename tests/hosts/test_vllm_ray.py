"""A replica across three hosts with Ray as vLLM's executor (`distributed_backend="ray"`): real
`ray==2.60.0` from PyPI in the vLLM venv, a Ray head unit and two Ray worker units, and the vLLM
unit on the head started only after `ray status` lists all three nodes.

The stand-in vLLM does not implement the Ray executor (it serves as soon as it starts), so what
this proves is the deploy's part: the Ray cluster forms under systemd with the pinned ports, and
vLLM starts after it is complete.
"""

from __future__ import annotations

import re
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
    http,
    put_model,
    secret,
    ssh_host,
    unit_show,
    write_fleet,
)

pytestmark = pytest.mark.hosts

RAY = "/opt/vllm/venvs/0.33.0/bin/ray"


@dataclass
class RayFleet:
    hosts: list[BenchHost]
    inventory: Path


@pytest.fixture(scope="module")
def ray_fleet(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RayFleet]:
    workdir = tmp_path_factory.mktemp("vllm-ray")
    package_index.add(build_vllm_wheel(workdir / "wheels"))
    hosts = test_hosts(3).hosts
    for host in hosts:
        fake_gpus(host)
        put_model(host, "meta-llama/Llama-3.1-8B-Instruct")
    key = secret(workdir, "engine.key", "sk-ray-engine")
    fleet = f"""Fleet(
    name="ray",
    machines=[{", ".join(ssh_host(h) for h in hosts)}],
    serve=[Serve(name="big", model="llama-3.1-8b-instruct", nodes_per_replica=3,
                 pipeline_parallel=3, distributed_backend="ray")],
    engine_api_key=SecretRef(file={str(key)!r}),
    sources=Sources(python_index={package_index.url!r}, weights=LocalPath(path="/srv/models")),
)"""
    yield RayFleet(hosts, write_fleet(workdir / "inventory" / "ray.py", fleet))
    # Stop Ray first: its node processes take a while to go, and a host that does not stop
    # within the bench's bound may linger and keep its address busy for the next module.
    for host in hosts:
        host.run("systemctl stop vllm-big ray-big", check=False, timeout=90)


def active_nodes(head: BenchHost) -> int:
    status = head.run(f"{RAY} status --address {head.address}:6379", timeout=90).stdout
    active = status.split("Active:", 1)[1].split("Pending:", 1)[0]
    return sum(int(n) for n in re.findall(r"^\s*(\d+)\s+node_", active, re.MULTILINE))


def test_ray_cluster_is_complete_before_vllm_starts(ray_fleet: RayFleet) -> None:
    head, *workers = ray_fleet.hosts
    run = deploy(ray_fleet.inventory).check()
    log = run.stderr
    complete = log.index("ray status: 3 of 3 nodes active")
    started = log.index("vllm-big.service: restarted")
    assert complete < started, log
    # systemd's own clocks (one kernel, so comparable across the test hosts) agree
    vllm_start = int(unit_show(head, "vllm-big", "ExecMainStartTimestampMonotonic"))
    for host in workers:
        ray_start = int(unit_show(host, "ray-big", "ActiveEnterTimestampMonotonic"))
        assert 0 < ray_start < vllm_start
        assert unit_show(host, "vllm-big", "LoadState") == "not-found"  # Ray only on workers
        assert unit_show(host, "ray-big", "User") == "vllm"
    assert active_nodes(head) == 3
    assert http(f"http://{head.address}:8000/health")[0] == 200
    config = head.run("cat /etc/vllm/big.yaml").stdout
    assert 'distributed-executor-backend: "ray"' in config and "nnodes" not in config
    unit = head.run("cat /etc/systemd/system/vllm-big.service").stdout
    assert f"Environment=RAY_ADDRESS={head.address}:6379" in unit
    assert "After=network-online.target nvidia-persistenced.service" in unit
    assert "ray-big.service" in unit


def test_ray_fleet_second_run_changes_nothing(ray_fleet: RayFleet) -> None:
    run = deploy(ray_fleet.inventory).check()
    assert run.changes() == {}, run
    assert active_nodes(ray_fleet.hosts[0]) == 3
