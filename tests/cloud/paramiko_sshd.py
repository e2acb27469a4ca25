"""A real SSH server on a loopback port (paramiko's ServerInterface; no root, no sshd needed).

It accepts one public key for one user, runs nothing but answers `exec` requests with fixed
output and exit status 0, and can refuse the first N logins the way a booting machine does.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paramiko


@dataclass
class SshServer:
    host_key_path: Path
    user: str
    authorized_key: str  # an OpenSSH public key line
    refuse_first: int = 0
    commands: list[str] = field(default_factory=list)
    logins: int = 0

    def __post_init__(self) -> None:
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(self.host_key_path))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        transport.add_server_key(self.host_key)
        handler = _Handler(self)
        try:
            transport.start_server(server=handler)
            channel = transport.accept(10)
            if channel is not None and handler.executed.wait(10):
                channel.sendall(b" 10:00:01 up 1 min,  0 users,  load average: 0.00\n")
                channel.send_exit_status(0)
                channel.close()
        except (paramiko.SSHException, EOFError, OSError):
            pass
        finally:
            transport.close()


class _Handler(paramiko.ServerInterface):
    def __init__(self, server: SshServer) -> None:
        self.server = server
        self.executed = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        wanted = self.server.authorized_key.split()[1]
        if username != self.server.user or key.get_base64() != wanted:
            return paramiko.AUTH_FAILED
        self.server.logins += 1
        if self.server.logins <= self.server.refuse_first:
            return paramiko.AUTH_FAILED  # sshd refuses logins while "System is booting up"
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.server.commands.append(command.decode())
        self.executed.set()
        return True
