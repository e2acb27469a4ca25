"""A handle on one booted test host: its name, address and key, and commands over real SSH."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import settings

SSH_OPTIONS = (
    "-o", "BatchMode=yes",
    # Addresses are reused by later hosts with new host keys; the bench trusts its own bridge.
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=5",
    "-o", "ServerAliveInterval=5",
    "-o", "ServerAliveCountMax=3",
)  # fmt: skip

READY_STATES = ("running", "degraded")


class HostCommandError(RuntimeError):
    """A command on a test host failed; the message holds its output."""


@dataclass
class BenchHost:
    """One test host. `root` is its root filesystem as seen from this machine."""

    name: str
    address: str
    ssh_key: Path
    root: Path
    host_dir: Path = field(repr=False)

    def ssh_argv(self, command: str, user: str = "root") -> list[str]:
        """The `ssh` command line that runs `command` (a shell string) on the host."""
        return ["ssh", *SSH_OPTIONS, "-i", str(self.ssh_key), f"{user}@{self.address}", command]

    def run(
        self,
        command: str,
        *,
        user: str = "root",
        timeout: float = 120.0,
        check: bool = True,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over SSH; raise `HostCommandError` if it fails."""
        result = subprocess.run(
            self.ssh_argv(command, user),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise HostCommandError(
                f"{self.name}: `{command}` exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def boot_id(self) -> str:
        """The kernel's boot id inside the host's namespace set; it changes on every boot."""
        return self.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def system_state(self, timeout: float = 10.0) -> str | None:
        """`systemctl is-system-running` once boot has settled, or None if SSH is not up yet."""
        command = f"timeout {int(timeout)} systemctl is-system-running --wait"
        try:
            result = self.run(command, check=False, timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            return None
        if result.returncode == 255:  # ssh itself failed: not reachable yet
            return None
        return result.stdout.strip() or None

    def wait_ready(self, timeout: float = settings.BOOT_TIMEOUT_S) -> str:
        """Wait until the host answers SSH and has finished booting; return the system state."""
        deadline = time.monotonic() + timeout
        state: str | None = None
        while time.monotonic() < deadline:
            state = self.system_state(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            if state in READY_STATES:
                return state
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.name} ({self.address}) not ready after {timeout:.0f}s (state: {state}); "
            f"console log: {self.console_log}\n{self.console_tail()}"
        )

    def wait_rebooted(
        self, previous_boot_id: str, timeout: float = settings.BOOT_TIMEOUT_S
    ) -> None:
        """Wait until the host is up again with a boot id other than `previous_boot_id`.

        The bench boots a host again when it reboots itself (nspawn exits with code 133).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.system_state(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            if state in READY_STATES:
                now = self.run("cat /proc/sys/kernel/random/boot_id", check=False, timeout=30)
                if now.returncode == 0 and now.stdout.strip() != previous_boot_id:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not come back from a reboot in {timeout:.0f}s")

    @property
    def console_log(self) -> Path:
        """The host's console output, every boot appended."""
        return self.host_dir / "console.log"

    def console_tail(self, lines: int = 30) -> str:
        """The last lines of the console log, for error messages."""
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no console log)"

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"
