"""The SSH readiness check against a real SSH server: banner, then a login that runs a command,
accepting only the host key pinned from the instance's console output."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from moto_cloud import write_ssh_key
from paramiko_sshd import SshServer

from servekit.cloud.ssh import (
    HostKeyMismatch,
    SshNotReady,
    SshTarget,
    read_banner,
    wait_until_ready,
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    client, other, host = tmp_path / "id", tmp_path / "other", tmp_path / "host"
    for key in (client, other, host):
        write_ssh_key(key)
    return client, other, host


@pytest.fixture
def server(keys: tuple[Path, Path, Path]) -> Iterator[SshServer]:
    client, _other, host = keys
    server = SshServer(host, "ubuntu", Path(f"{client}.pub").read_text())
    yield server
    server.close()


def pinned(server: SshServer) -> tuple[str, ...]:
    """The server's real host key, as the console output lists it."""
    return (f"{server.host_key.get_name()} {server.host_key.get_base64()}",)


def test_ready_after_banner_and_a_real_login(server: SshServer, keys: tuple[Path, ...]) -> None:
    assert read_banner("127.0.0.1", server.port, 5).startswith("SSH-2.0-")
    target = SshTarget("a100-0", "127.0.0.1", "ubuntu", keys[0], server.port, pinned(server))
    output = wait_until_ready(target, timeout_s=20, poll_s=0.1)
    assert "up 1 min" in output
    assert server.commands == ["uptime"]


def test_keeps_trying_while_the_machine_refuses_logins(
    server: SshServer, keys: tuple[Path, ...]
) -> None:
    server.refuse_first = 2
    target = SshTarget("a100-0", "127.0.0.1", "ubuntu", keys[0], server.port, pinned(server))
    wait_until_ready(target, timeout_s=20, poll_s=0.1)
    assert server.logins == 3 and server.commands == ["uptime"]


def test_a_key_the_machine_does_not_know_times_out_in_bounds(
    server: SshServer, keys: tuple[Path, ...]
) -> None:
    target = SshTarget("a100-0", "127.0.0.1", "ubuntu", keys[1], server.port, pinned(server))
    started = time.monotonic()
    with pytest.raises(SshNotReady, match=r"a100-0.*did not accept SSH within 2 s.*Authentication"):
        wait_until_ready(target, timeout_s=2, poll_s=0.3)
    assert time.monotonic() - started < 8
    assert server.commands == []


def test_a_host_key_other_than_the_pinned_one_is_refused_at_once(
    server: SshServer, keys: tuple[Path, ...]
) -> None:
    """Someone else's key at the address: a clear error, no retry, and no login at all."""
    impostor = paramiko.Ed25519Key.from_private_key_file(str(keys[1]))
    console = (f"ssh-ed25519 {impostor.get_base64()}",)
    target = SshTarget("a100-0", "127.0.0.1", "ubuntu", keys[0], server.port, console)
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch) as refused:
        wait_until_ready(target, timeout_s=20, poll_s=0.1)
    assert time.monotonic() - started < 5  # not retried until the timeout
    message = str(refused.value)
    assert "possible man-in-the-middle" in message and "a100-0" in message
    assert server.host_key.fingerprint in message  # what it presented
    assert impostor.fingerprint.rstrip("=") in message  # what the console listed
    assert server.logins == 0 and server.commands == []


def test_no_pinned_key_means_no_connection(server: SshServer, keys: tuple[Path, ...]) -> None:
    target = SshTarget("a100-0", "127.0.0.1", "ubuntu", keys[0], server.port)
    with pytest.raises(HostKeyMismatch, match="does not trust the first key"):
        wait_until_ready(target, timeout_s=5, poll_s=0.1)
    assert server.logins == 0 and server.commands == []


def test_the_pinned_key_among_others_of_other_types_is_accepted(
    server: SshServer, keys: tuple[Path, ...]
) -> None:
    """Consoles list several key types (ecdsa, ed25519, rsa); the server offers one of them."""
    rsa = paramiko.RSAKey.generate(2048)
    listed = (f"ssh-rsa {rsa.get_base64()}", *pinned(server))
    target = SshTarget("a100-0", "127.0.0.1", "ubuntu", keys[0], server.port, listed)
    assert "up 1 min" in wait_until_ready(target, timeout_s=20, poll_s=0.1)


def test_nothing_listening_times_out_in_bounds(keys: tuple[Path, ...]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = SshTarget("a100-1", "127.0.0.1", "ubuntu", keys[0], port)
    started = time.monotonic()
    with pytest.raises(SshNotReady, match=r"a100-1.*ConnectionRefused"):
        wait_until_ready(target, timeout_s=1, poll_s=0.2)
    assert time.monotonic() - started < 5


def test_a_port_that_is_not_ssh_is_not_ready() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer_http() -> None:
            peer, _ = listener.accept()
            with peer:
                peer.sendall(b"HTTP/1.1 400 Bad Request\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        with pytest.raises(OSError, match=r"no SSH banner.*HTTP/1\.1 400"):
            read_banner("127.0.0.1", listener.getsockname()[1], 5)
