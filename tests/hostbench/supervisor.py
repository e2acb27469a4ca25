"""Keep one test host running: boot it with systemd-nspawn, boot it again when it reboots itself.

Run as a child of the test process (`python supervisor.py --root ... --name ...`), stdlib only, so
it works whatever the test process does to threads (pyinfra's CLI monkey-patches them with gevent).
It stops the host (SIGTERM to its own `systemd-nspawn`, SIGKILL after a bound) when it gets SIGTERM,
SIGINT or SIGHUP, or when its parent process is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REBOOT_EXIT_CODE = 133


def nspawn_argv(root: str, name: str, bridge: str) -> list[str]:
    """The `systemd-nspawn` command line for one host."""
    return [
        "systemd-nspawn",
        "--quiet",
        f"--directory={root}",
        "--boot",
        "--register=no",  # this machine has no systemd as PID 1 and no system bus
        "--keep-unit",
        f"--network-bridge={bridge}",
        f"--machine={name}",
        "--resolv-conf=off",  # the bench writes the host's resolv.conf itself
        "--link-journal=no",
        "--console=read-only",
    ]


def _identity(pid: int) -> str:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return f"{pid}:{fields[19]}"


class Supervisor:
    """Runs `systemd-nspawn` until told to stop; a reboot (exit code 133) boots it again."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.parent = os.getppid()
        self.stop_requested_at: float | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def request_stop(self, *_: object) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def _wait(self, child: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if os.getppid() != self.parent:
                    self.request_stop()
                started = self.stop_requested_at
                if started is not None and time.monotonic() - started > self.args.stop_timeout:
                    child.kill()

    def run(self) -> int:
        boots = 0
        with open(self.args.log, "ab", buffering=0) as log:
            while self.stop_requested_at is None:
                boots += 1
                log.write(f"\n==== servekit-testbench: boot {boots} ====\n".encode())
                self.child = subprocess.Popen(
                    nspawn_argv(self.args.root, self.args.name, self.args.bridge),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                Path(self.args.pid_file).write_text(_identity(self.child.pid))
                if self.stop_requested_at is not None:  # a signal came while starting
                    self.request_stop()
                code = self._wait(self.child)
                log.write(f"\n==== servekit-testbench: exit code {code} ====\n".encode())
                if code != REBOOT_EXIT_CODE:
                    return code
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--bridge", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--pid-file", required=True, help="where the nspawn PID:STARTTIME goes")
    parser.add_argument("--stop-timeout", type=float, default=20.0)
    supervisor = Supervisor(parser.parse_args())
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
