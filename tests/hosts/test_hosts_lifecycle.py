"""Test hosts reboot and come back, and leave nothing behind when stopped or when their run dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hostbench import Bench, network, registry
from hostbench.fsutil import identity_alive, mounts_under
from hostbench.plugin import HostFactory, require_bench

pytestmark = pytest.mark.hosts

TESTS_DIR = Path(__file__).parents[1]


def nspawn_processes_under(path: Path) -> list[int]:
    """PIDs of `systemd-nspawn` processes whose root directory lies under `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"systemd-nspawn")
            and any(arg.startswith(f"--directory={path}/".encode()) for arg in argv)
        ):
            found.append(int(proc.name))
    return found


def leftovers(path: Path) -> list[str]:
    """What stopped hosts left under `path` (a run or host directory): nspawn, mounts, files."""
    found = [f"nspawn pid {pid}" for pid in nspawn_processes_under(path)]
    found += [f"mount {point}" for point in mounts_under(path)]
    if path.exists():
        found.append(f"directory {path}")
    return found


def test_reboot_boots_the_host_again(test_hosts: HostFactory) -> None:
    (host,) = test_hosts(1)
    hostname_before = host.run("hostname").stdout
    boot_before = host.boot_id()

    host.run("systemctl reboot", check=False, timeout=30)
    host.wait_rebooted(boot_before)

    assert host.boot_id() != boot_before
    assert host.run("hostname").stdout == hostname_before
    assert host.system_state() in ("running", "degraded")
    assert "exit code 133" in host.console_log.read_text()


def test_fixture_teardown_leaves_nothing_behind(bench: Bench, tmp_path: Path) -> None:
    factory = HostFactory(bench, tmp_path)
    hosts = factory(2)
    nspawn_ids = [(h.host_dir / "nspawn.pid").read_text() for h in hosts]
    assert all(identity_alive(identity) for identity in nspawn_ids)
    assert mounts_under(hosts[0].host_dir)

    factory.close()  # what the `test_hosts` fixture does when its module ends

    assert not any(identity_alive(identity) for identity in nspawn_ids)
    assert [item for host in hosts for item in leftovers(host.host_dir)] == []
    for host in hosts:
        lease = registry.LEASES_DIR / host.address.rsplit(".", 1)[1]
        assert not lease.exists() or lease.read_text() != bench.run_id


CHILD_RUN = """
import sys, time
from hostbench import Bench
bench = Bench.open()
bench.boot(1)
print(bench.run_dir, flush=True)
time.sleep(600)
"""


def start_child_run() -> tuple[subprocess.Popen[str], Path]:
    """Another test process on this machine with one booted host; return it and its run dir."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_RUN],
        cwd=TESTS_DIR,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    run_dir = Path(child.stdout.readline().strip())
    assert run_dir.is_dir(), "the child run did not boot its host"
    return child, run_dir


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_interrupted_run_stops_its_hosts(bench: Bench) -> None:
    child, run_dir = start_child_run()
    assert nspawn_processes_under(run_dir)

    child.send_signal(signal.SIGTERM)  # e.g. CI cancelling the job
    assert child.wait(timeout=60) != 0

    assert leftovers(run_dir) == []
    assert not run_dir.exists()


def test_janitor_cleans_a_killed_run_but_not_live_ones(bench: Bench) -> None:
    child, run_dir = start_child_run()
    live_host = bench.boot(1)[0]

    child.kill()  # no chance to clean up: mounts and files stay, hosts stop with their supervisor
    child.wait(timeout=10)
    assert wait_until(lambda: not nspawn_processes_under(run_dir), timeout=40)

    with registry.bench_lock():
        left_by_crash = leftovers(run_dir)  # empty only if another run's janitor came first
        cleaned = registry.clean_dead_runs()

    assert leftovers(run_dir) == []
    assert run_dir.name in cleaned or not left_by_crash
    assert bench.run_id not in cleaned
    assert live_host.run("true").returncode == 0
    bench.stop([live_host])


@pytest.mark.hosts
def test_stale_veth_of_a_dead_container_is_removed() -> None:
    require_bench()
    name = "sk-hstale"
    subprocess.run(
        ["ip", "link", "add", f"vb-{name}", "type", "veth", "peer", "name", "sk-stale-peer"],
        check=True,
    )
    try:
        assert network.remove_stale_veth(name)
        assert not Path(f"/sys/class/net/vb-{name}").exists()
        assert not network.remove_stale_veth(name)
    finally:
        subprocess.run(["ip", "link", "delete", f"vb-{name}"], capture_output=True)
