"""Where the gateway lives on its host: HAProxy's config, servekit's maps beside it, the runtime
socket, the service and the account HAProxy runs as. Tests point the paths at a temporary
directory (`GatewayLayout.under`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayLayout:
    config: str = "/etc/haproxy/haproxy.cfg"
    directory: str = "/etc/haproxy/servekit"
    runtime_socket: str = "/run/haproxy/admin.sock"
    log_target: str = "/dev/log"
    service: str = "haproxy"
    user: str = "haproxy"
    group: str = "haproxy"
    drop_privileges: bool = True
    """`user`/`group` in HAProxy's global section (Debian's unit starts it as root)."""
    bind_address: str = "*"
    """Clients come from anywhere: the key is the control."""

    @property
    def keys_map(self) -> str:
        """sha256 (lower-case hex) of a client key -> the key's name."""
        return f"{self.directory}/keys.map"

    @property
    def allowed_map(self) -> str:
        """`name/model` -> 1 for every model a key may use."""
        return f"{self.directory}/allowed.map"

    @property
    def routes_map(self) -> str:
        """Served model name -> the backend (pool) that serves it."""
        return f"{self.directory}/routes.map"

    @property
    def rpm_map(self) -> str:
        """Key name -> requests per minute (absent: unlimited)."""
        return f"{self.directory}/rpm.map"

    @property
    def concurrent_map(self) -> str:
        """Key name -> concurrent requests (absent: unlimited)."""
        return f"{self.directory}/concurrent.map"

    @property
    def models_json(self) -> str:
        """The body of `GET /v1/models`."""
        return f"{self.directory}/models.json"

    @classmethod
    def under(cls, root: str, bind_address: str = "127.0.0.1") -> GatewayLayout:
        """Every path under `root`, log to stderr, no privilege drop: a non-root test run."""
        return cls(
            config=f"{root}/haproxy.cfg",
            directory=f"{root}/servekit",
            runtime_socket=f"{root}/admin.sock",
            log_target="stderr",
            drop_privileges=False,
            bind_address=bind_address,
        )


GATEWAY = GatewayLayout()
