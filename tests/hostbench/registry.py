"""Runs sharing the machine: who owns which host address, and cleaning up after runs that died.

Every run registers a directory under `STATE_DIR/runs/<run id>/` holding its owner process
(`PID:STARTTIME`) and one directory per host. Addresses are leased as files under
`STATE_DIR/leases/`, created while holding `STATE_DIR/lock`, so concurrent runs never collide.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import settings
from .fsutil import file_lock, identity_alive, process_identity, remove_tree

RUNS_DIR = settings.STATE_DIR / "runs"
LEASES_DIR = settings.STATE_DIR / "leases"
OWNER_FILE = "owner.pid"
PID_FILE_SUFFIX = ".pid"


@contextmanager
def bench_lock() -> Iterator[None]:
    """The machine-wide lock around leases, run registration and the janitor."""
    with file_lock(settings.STATE_DIR / "lock"):
        yield


def register_run() -> tuple[str, Path]:
    """Create this process's run directory; return the run id and the directory."""
    run_id = f"{os.getpid()}-{secrets.token_hex(3)}"
    run_dir = RUNS_DIR / run_id
    run_dir.mkdir(parents=True)
    (run_dir / OWNER_FILE).write_text(process_identity(os.getpid()))
    return run_id, run_dir


def lease_octets(run_id: str, count: int) -> list[int]:
    """Lease `count` free host addresses (last octets) to `run_id`; call under `bench_lock`."""
    LEASES_DIR.mkdir(parents=True, exist_ok=True)
    taken = {int(p.name) for p in LEASES_DIR.iterdir() if p.name.isdigit()}
    free = [octet for octet in settings.HOST_OCTETS if octet not in taken]
    if len(free) < count:
        raise RuntimeError(f"only {len(free)} test host addresses are free, {count} wanted")
    for octet in free[:count]:
        (LEASES_DIR / str(octet)).write_text(run_id)
    return free[:count]


def release_octets(run_id: str, octets: list[int]) -> None:
    """Give leased addresses back (only those still leased to `run_id`)."""
    for octet in octets:
        lease = LEASES_DIR / str(octet)
        if lease.exists() and lease.read_text() == run_id:
            lease.unlink()


def stop_process(identity: str, timeout: float = settings.STOP_TIMEOUT_S) -> None:
    """SIGTERM the process written as `PID:STARTTIME`, SIGKILL it after `timeout` seconds."""
    pid = int(identity.partition(":")[0])
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not identity_alive(identity):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while identity_alive(identity) and time.monotonic() < deadline:
            time.sleep(0.1)


def clean_run_dir(run_dir: Path) -> None:
    """Stop every process a run recorded, unmount and delete its files, drop its leases."""
    for pid_file in sorted(run_dir.rglob(f"*{PID_FILE_SUFFIX}")):
        if pid_file.name != OWNER_FILE:
            stop_process(pid_file.read_text().strip())
    remove_tree(run_dir)
    if LEASES_DIR.is_dir():
        for lease in LEASES_DIR.iterdir():
            if lease.read_text() == run_dir.name:
                lease.unlink()


def clean_dead_runs() -> list[str]:
    """Clean up after runs whose owner process is gone; return their ids. Call under `bench_lock`.

    Live runs are never touched: their owner file names a running process.
    """
    cleaned: list[str] = []
    if RUNS_DIR.is_dir():
        for run_dir in sorted(RUNS_DIR.iterdir()):
            owner = run_dir / OWNER_FILE
            if owner.exists() and identity_alive(owner.read_text().strip()):
                continue
            clean_run_dir(run_dir)
            cleaned.append(run_dir.name)
    if LEASES_DIR.is_dir():
        for lease in LEASES_DIR.iterdir():
            if not (RUNS_DIR / lease.read_text()).is_dir():
                lease.unlink()
    return cleaned
