"""Where the gateway lives on its host: HAProxy's config, servekit's maps beside it, the runtime
socket, the service and the account HAProxy runs as, and the per-key metrics beside it (HAProxy
logs to rsyslog, which writes the access log mtail reads; mtail answers on loopback). Tests
point the paths at a temporary directory (`GatewayLayout.under`)."""

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
    access_log_address: str = "127.0.0.1"
    access_log_port: int = 5140
    """rsyslog's UDP input for HAProxy's lines, on loopback (HAProxy's management guide, section 8
    "Logging", https://docs.haproxy.org/2.6/management.html: UDP to the local syslog daemon, as
    UNIX sockets' small buffers lose messages; 514 is left to the host's own syslog)."""
    access_log_dir: str = "/var/log/servekit-gateway"
    """The access log, written by rsyslog: 0750 root:mtail, the file 0640 root:mtail."""
    rsyslog_conf: str = "/etc/rsyslog.d/30-servekit-gateway.conf"
    logrotate_conf: str = "/etc/logrotate.d/servekit-gateway"
    metrics_programs: str = "/etc/servekit/gateway-metrics"
    """mtail's program directory (`--progs`): servekit's program only."""
    metrics_user: str = "mtail"
    """The account Debian's `mtail` package creates; servekit's unit runs mtail as it."""
    metrics_service: str = "servekit-gateway-metrics"
    metrics_unit_dir: str = "/etc/systemd/system"
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 3904
    """Loopback only; HAProxy answers `/metrics/keys` from it (3903, mtail's default, is left to
    Debian's own mtail.service)."""

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

    @property
    def access_log(self) -> str:
        """One line per request, as HAProxy's log-format writes it; mtail reads it."""
        return f"{self.access_log_dir}/access.log"

    @property
    def metrics_program(self) -> str:
        """The mtail program that turns access log lines into per-key metrics."""
        return f"{self.metrics_programs}/gateway.mtail"

    @property
    def metrics_unit(self) -> str:
        return f"{self.metrics_unit_dir}/{self.metrics_service}.service"

    @classmethod
    def under(
        cls,
        root: str,
        bind_address: str = "127.0.0.1",
        metrics_port: int = 3904,
        access_log_port: int = 5140,
    ) -> GatewayLayout:
        """Every path under `root`, log to stderr, no privilege drop: a non-root test run."""
        return cls(
            config=f"{root}/haproxy.cfg",
            directory=f"{root}/servekit",
            runtime_socket=f"{root}/admin.sock",
            log_target="stderr",
            drop_privileges=False,
            bind_address=bind_address,
            access_log_port=access_log_port,
            access_log_dir=f"{root}/log",
            rsyslog_conf=f"{root}/rsyslog.conf",
            logrotate_conf=f"{root}/logrotate.conf",
            metrics_programs=f"{root}/mtail",
            metrics_unit_dir=f"{root}/units",
            metrics_port=metrics_port,
        )


GATEWAY = GatewayLayout()
