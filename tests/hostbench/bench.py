"""The bench: boots test hosts on the bridge and guarantees they are stopped and removed again.

One `Bench` per test process. It registers a run (see `registry`), cleans up after dead runs, and
stops its own hosts on `close()`, at interpreter exit, and on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from . import network, registry, rootfs, settings
from .fsutil import process_identity, remove_tree
from .host import BenchHost

SUPERVISOR = Path(__file__).with_name("supervisor.py")
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_PACKAGES = ("debootstrap", "systemd-container", "iptables", "openssh-client")
"""What a Debian machine installs to boot test hosts."""


def host_name(octet: int) -> str:
    """A test host's name, derived from its address so concurrent runs never share one."""
    return f"sk-h{octet}"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _host0_network(address: str) -> str:
    return (
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={address}/{settings.NETMASK_BITS}\nGateway={settings.GATEWAY}\n"
        # The image's own 80-container-host0.network would also ask for DHCP; this file sorts first.
        "LinkLocalAddressing=no\n"
    )


def _authorize(root: Path, user: str, public_key: str) -> None:
    """Install `public_key` for `user` inside `root`, owned by that user's ids from its passwd."""
    home, uid, gid = "/root", 0, 0
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            uid, gid, home = int(fields[2]), int(fields[3]), fields[5]
    ssh_dir = root / home.lstrip("/") / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    _write(ssh_dir / "authorized_keys", public_key, 0o600)
    for path in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, uid, gid)


@dataclass
class _Entry:
    host: BenchHost
    octet: int
    supervisor: subprocess.Popen[bytes] | None = None


class Bench:
    """Boots, tracks and removes this process's test hosts."""

    def __init__(self, base_root: Path, run_id: str, run_dir: Path) -> None:
        self.base_root = base_root
        self.run_id = run_id
        self.run_dir = run_dir
        self.ssh_key = run_dir / "id_ed25519"
        self.timings: list[str] = []  # what took how long, for the test report
        self._owner = os.getpid()
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls) -> Bench:
        """Build or reuse the root filesystem, set up the bridge, register this run."""
        recipe = rootfs.default_recipe()
        cached = rootfs.cache_path(recipe).is_dir()
        started = time.monotonic()
        base_root = rootfs.ensure_rootfs(recipe)
        rootfs_seconds = time.monotonic() - started
        with registry.bench_lock():
            registry.clean_dead_runs()
            network.ensure_bridge()
            run_id, run_dir = registry.register_run()
        bench = cls(base_root, run_id, run_dir)
        how = "cached" if cached else "built with debootstrap"
        bench.timings.append(f"root filesystem {base_root.name}: {how}, {rootfs_seconds:.1f} s")
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"servekit-testbench-{run_id}",
             "-f", str(bench.ssh_key)],
            check=True,
        )  # fmt: skip
        atexit.register(bench.close)
        _stop_on_signals()
        return bench

    def boot(self, count: int) -> list[BenchHost]:
        """Boot `count` fresh hosts in parallel; return them once each is ready."""
        started = time.monotonic()
        with registry.bench_lock():
            octets = registry.lease_octets(self.run_id, count)
        try:
            with ThreadPoolExecutor(max_workers=count) as pool:
                hosts = list(pool.map(self._start, octets))
                list(pool.map(lambda host: host.wait_ready(), hosts))
        except BaseException:
            with self._lock:
                booting = [e.host for e in self._entries.values() if e.octet in octets]
            self.stop(booting)
            with registry.bench_lock():
                registry.release_octets(self.run_id, octets)
            raise
        self.timings.append(
            f"booted {count} host(s) to running in {time.monotonic() - started:.1f} s"
        )
        return hosts

    def _start(self, octet: int) -> BenchHost:
        name = host_name(octet)
        host_dir = self.run_dir / "hosts" / name
        root = host_dir / "root"
        for sub in ("upper", "work", "root"):
            (host_dir / sub).mkdir(parents=True)
        host = BenchHost(
            name=name,
            address=f"{settings.SUBNET_PREFIX}.{octet}",
            ssh_key=self.ssh_key,
            root=root,
            host_dir=host_dir,
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("the bench is closed")
            self._entries[name] = entry = _Entry(host, octet)
        network.remove_stale_veth(name)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.base_root},upperdir={host_dir / 'upper'},workdir={host_dir / 'work'}",
             str(root)],
            check=True,
        )  # fmt: skip
        self._personalize(host)
        entry.supervisor = subprocess.Popen(
            [sys.executable, str(SUPERVISOR), "--root", str(root), "--name", name,
             "--bridge", settings.BRIDGE, "--log", str(host.console_log),
             "--pid-file", str(host_dir / f"nspawn{registry.PID_FILE_SUFFIX}"),
             "--stop-timeout", str(settings.STOP_TIMEOUT_S)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops hosts
        )  # fmt: skip
        (host_dir / f"supervisor{registry.PID_FILE_SUFFIX}").write_text(
            process_identity(entry.supervisor.pid)
        )
        return host

    def _personalize(self, host: BenchHost) -> None:
        """Give a fresh root its own identity, address and keys, and this machine's resolver/CA."""
        root = host.root
        _write(root / "etc/hostname", f"{host.name}\n")
        _write(
            root / "etc/hosts",
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n::1\tlocalhost ip6-localhost\n",
        )
        _write(root / "etc/systemd/network/10-host0.network", _host0_network(host.address))
        _write(root / "etc/resolv.conf", Path("/etc/resolv.conf").read_text())
        # pip on the host verifies PyPI with this machine's CA bundle; the copy under
        # /usr/local/share keeps it if a package rebuilds the bundle with update-ca-certificates.
        bundle = MACHINE_CA_BUNDLE.read_text()
        _write(root / "etc/ssl/certs/ca-certificates.crt", bundle)
        _write(root / "usr/local/share/ca-certificates/servekit-testbench-machine.crt", bundle)
        subprocess.run(["ssh-keygen", "-q", "-A", "-f", str(root)], check=True, capture_output=True)
        public_key = self.ssh_key.with_suffix(".pub").read_text()
        for user in ("root", rootfs.CLOUD_USER):
            _authorize(root, user, public_key)

    def stop(self, hosts: list[BenchHost]) -> None:
        """Stop hosts, remove their files and give their addresses back.

        All are signalled first and then waited for, so they shut down in parallel; no threads,
        because this also runs at interpreter exit.
        """
        with self._lock:
            popped = [self._entries.pop(host.name, None) for host in hosts]
        entries = [entry for entry in popped if entry is not None]
        for entry in entries:
            if entry.supervisor is not None:
                entry.supervisor.terminate()
        for entry in entries:
            self._reap(entry)
        with registry.bench_lock():
            registry.release_octets(self.run_id, [entry.octet for entry in entries])

    @staticmethod
    def _reap(entry: _Entry) -> None:
        process = entry.supervisor
        if process is not None:
            try:
                process.wait(timeout=settings.STOP_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:  # the supervisor itself hangs: kill both
                nspawn_pid = entry.host.host_dir / f"nspawn{registry.PID_FILE_SUFFIX}"
                if nspawn_pid.exists():
                    registry.stop_process(nspawn_pid.read_text(), timeout=0)
                process.kill()
                process.wait(timeout=10)
        remove_tree(entry.host.host_dir)

    def close(self) -> None:
        """Stop every host of this run and remove the run's files. Safe to call twice."""
        if os.getpid() != self._owner:  # a forked child inherits atexit handlers; not its hosts
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            hosts = [entry.host for entry in self._entries.values()]
        self.stop(hosts)
        with registry.bench_lock():
            registry.clean_run_dir(self.run_dir)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_on_signals() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so fixtures and atexit handlers still run."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_interrupt)


def tool_missing() -> str | None:
    """Why this machine cannot boot test hosts, or None when it can."""
    if os.geteuid() != 0:
        return "test hosts need root (systemd-nspawn, mounts, a bridge)"
    for tool in ("systemd-nspawn", "debootstrap", "ip", "iptables", "mount", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install {' '.join(DEBIAN_PACKAGES)})"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    if not MACHINE_CA_BUNDLE.exists():
        return f"{MACHINE_CA_BUNDLE} is missing"
    return None
