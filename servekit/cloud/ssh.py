"""Is a new machine ready for pyinfra? Its SSH banner, then a real login that runs a command.

A `running` instance is not yet usable: sshd may not listen, or may answer "System is booting up"
and refuse logins. SkyPilot therefore waits for the banner (a raw socket read that starts with
`SSH-`) and then for a real `ssh ... uptime`; this does the same with paramiko, bounded in time.

The server must present one of the host keys pinned from the instance's console output
(servekit/cloud/hostkeys.py), never "the first key it sees": a different key is a
`HostKeyMismatch` at once (someone may be in the middle), not a retry.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from servekit.cloud.errors import CloudError


class SshNotReady(CloudError):
    pass


class HostKeyMismatch(CloudError):
    """The machine at the address presented a host key the instance's console does not list."""


@dataclass(frozen=True)
class SshTarget:
    node: str
    host: str
    user: str
    key: Path
    port: int = 22
    host_keys: tuple[str, ...] = ()  # `TYPE BASE64` lines pinned from the console output


def _pin(client: paramiko.SSHClient, target: SshTarget) -> None:
    """Trust exactly the target's pinned keys, under the name paramiko looks up for the port."""
    if not target.host_keys:
        raise HostKeyMismatch(
            f"{target.node}: no pinned host key for {target.host}; servekit does not trust the "
            "first key a server presents"
        )
    name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    for line in target.host_keys:
        key_type, blob = line.split()[:2]
        key = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
        client.get_host_keys().add(name, key_type, key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())


def read_banner(host: str, port: int, timeout_s: float) -> str:
    """The server's identification line, e.g. `SSH-2.0-OpenSSH_8.9p1`; OSError if none."""
    with socket.create_connection((host, port), timeout=timeout_s) as conn:
        conn.settimeout(timeout_s)
        data = b""
        while b"\n" not in data and len(data) < 256:
            chunk = conn.recv(256)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("SSH-"):
        raise OSError(f"no SSH banner from {host}:{port} (got {line[:60]!r})")
    return line


def run_command(target: SshTarget, command: str, timeout_s: float) -> str:
    """Log in with the target's key and run `command`; its output, or an error if it fails."""
    client = paramiko.SSHClient()
    try:
        _pin(client, target)
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            key_filename=str(target.key),
            timeout=timeout_s,
            banner_timeout=timeout_s,
            auth_timeout=timeout_s,
            look_for_keys=False,
            allow_agent=False,
        )
        _stdin, stdout, stderr = client.exec_command(command, timeout=timeout_s)
        output = stdout.read().decode(errors="replace")
        status = stdout.channel.recv_exit_status()
        if status != 0:
            error = stderr.read().decode(errors="replace").strip()
            raise OSError(f"`{command}` exited {status}: {error[:200]}")
        return output
    finally:
        client.close()


def wait_until_ready(
    target: SshTarget,
    timeout_s: float,
    poll_s: float = 5.0,
    attempt_timeout_s: float = 10.0,
    command: str = "uptime",
) -> str:
    """Wait (at most `timeout_s`) until SSH answers and a login runs `command`."""
    deadline = time.monotonic() + timeout_s
    last_error = "not tried"
    while True:
        left = deadline - time.monotonic()
        attempt = max(0.5, min(attempt_timeout_s, left))
        try:
            read_banner(target.host, target.port, attempt)
            return run_command(target, command, attempt)
        except paramiko.BadHostKeyException as error:
            raise HostKeyMismatch(
                f"{target.node} ({target.host}:{target.port}) presented the host key "
                f"{_describe(error.key)}, but its console output lists "
                f"{', '.join(_describe_line(k) for k in target.host_keys)}: possible "
                "man-in-the-middle (or another machine at this address); servekit did not log "
                "in. Check the instance, then `servekit cloud apply` again"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as error:
            last_error = f"{type(error).__name__}: {error}"
        if time.monotonic() + poll_s > deadline:
            raise SshNotReady(
                f"{target.node} ({target.user}@{target.host}:{target.port}) did not accept SSH "
                f"within {timeout_s:.0f} s; last error: {last_error}"
            )
        time.sleep(poll_s)


def _describe(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _describe_line(line: str) -> str:
    key_type, blob = line.split()[:2]
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode()
    return f"{key_type} SHA256:{digest.rstrip('=')}"
