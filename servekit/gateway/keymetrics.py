"""The gateway's access log and per-key metrics: rsyslog writes HAProxy's lines to a file
(templates/gateway-rsyslog.conf.j2, rotated by templates/gateway-logrotate.j2), and an mtail
program (templates/gateway.mtail.j2) turns them into Prometheus counters and latency histograms
per key name, served model and pool, run by Debian's mtail under servekit's unit.

Why a file: HAProxy logs only to syslog sockets, and mtail 3.0.0~rc50 (Debian bookworm) reads one
datagram per poll (250 ms) from a socket, so a busy gateway's lines would be dropped; it reads a
file to its end at each poll (https://github.com/google/mtail/blob/main/internal/tailer/logstream/
dgramstream.go and filestream.go). HAProxy logs each request twice: to the host's log
(`GatewayLayout.log_target`) and to rsyslog's UDP input on loopback (`access_log_port`; a UNIX
socket's queue of 10 datagrams lost 6% of the lines at 6,000 requests/s). mtail
answers on loopback only; HAProxy serves its page as `/metrics/keys` to the clients that may read
`/metrics`. The log line holds key names only (never a key, a header or a body), and the program
makes a label only of values servekit knows: a key name from the keys map, a served model name,
a pool. A model a client names that the fleet does not serve is counted under model="".
"""

from __future__ import annotations

import re
import string

from servekit import systemd
from servekit.gateway.haproxy import haproxy_word, map_word, pools
from servekit.gateway.layout import GATEWAY, GatewayLayout
from servekit.hostplan import HostPlan
from servekit.templating import RenderedFile, environment

PACKAGES = ("mtail", "rsyslog")
"""Debian's packages (bookworm: mtail 3.0.0~rc50, rsyslog 8.2302):
https://packages.debian.org/bookworm/mtail, https://packages.debian.org/bookworm/rsyslog"""
MTAIL = "/usr/bin/mtail"
"""Where Debian's package installs the binary (its own mtail.service runs /usr/bin/mtail)."""
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
"""Seconds: a short completion's first token (50 ms) to a long generation (2 minutes)."""
MAX_REGEXP_LENGTH = 65536
"""mtail refuses a regular expression longer than `--max_regexp_length` (default 1024,
`mtail --help`); the served model names are one alternation in the program."""
METRIC_NAMES = (
    "servekit_gateway_requests_total",
    "servekit_gateway_request_duration_seconds",
    "servekit_gateway_response_headers_seconds",
    "servekit_gateway_log_lines_unparsed_total",
)
_LITERAL = set(string.ascii_letters + string.digits + "_")


def re2_literal(text: str) -> str:
    """`text` matched literally by RE2 inside mtail's `/.../`: every other character escaped
    (RE2 reads `\\` before punctuation as that character; mtail reads `\\/` as `/`)."""
    if not text.isascii() or not text.isprintable():
        raise ValueError(f"not printable ASCII: {text!r}")
    return "".join(c if c in _LITERAL else f"\\{c}" for c in text)


def alternation(words: list[str]) -> str:
    """One RE2 alternation of `words`, longest first (so no word stops at another's prefix)."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "|".join(re2_literal(w) for w in ordered)


def logged(model: str) -> str:
    """A served model name as the access log shows it: HAProxy's `json` converter escapes `"`,
    `\\`, `/` and control characters (haproxy.cfg's log-format; the converter:
    https://docs.haproxy.org/2.6/configuration.html#7.3.1-json; `/` measured with 2.6.12); a
    served name (`map_word`) has only `/` of these."""
    return model.replace("/", "\\/")


def metrics_program(plan: HostPlan) -> str:
    """The mtail program for this gateway: its pools and served model names as labels."""
    assert plan.gateway is not None, f"host {plan.name} runs no gateway"
    backends = pools(plan.gateway.routes)
    models = [map_word(model) for pool in backends for model in pool.models]
    program = (
        environment()
        .get_template("gateway.mtail.j2")
        .render(
            fleet=haproxy_word(plan.fleet),
            pools=alternation([pool.name for pool in backends]),
            models=alternation([logged(model) for model in models]),
            buckets=", ".join(f"{b:g}" for b in BUCKETS),
        )
    )
    longest = max(len(line) for line in program.splitlines())
    if longest > MAX_REGEXP_LENGTH:
        raise ValueError(f"the gateway serves too many model names for mtail ({longest} chars)")
    return program


def plain_path(path: str) -> str:
    """A path for rsyslog's and logrotate's configuration: absolute, nothing they parse."""
    if not path.startswith("/") or not re.fullmatch(r"[A-Za-z0-9._/+@=-]+", path):
        raise ValueError(f"not a plain absolute path: {path!r}")
    return path


def mtail_argv(layout: GatewayLayout) -> list[str]:
    """mtail as the unit runs it: servekit's program, the access log, loopback HTTP."""
    return [
        MTAIL,
        "--progs", layout.metrics_programs,
        "--logs", plain_path(layout.access_log),
        "--address", layout.metrics_address,
        "--port", str(int(layout.metrics_port)),
        "--logtostderr",
        "--emit_prog_label=false",
        f"--max_regexp_length={MAX_REGEXP_LENGTH}",
    ]  # fmt: skip


def metrics_unit(layout: GatewayLayout) -> str:
    """servekit-gateway-metrics.service: mtail as Debian's `mtail` user, hardened."""
    return (
        environment()
        .get_template("servekit-gateway-metrics.service.j2")
        .render(
            unit=layout.metrics_service,
            log=layout.access_log,
            address=layout.metrics_address,
            port=int(layout.metrics_port),
            user=layout.metrics_user,
            argv=mtail_argv(layout),
            sandbox=systemd.metrics_sandbox(),
        )
    )


def access_log_files(plan: HostPlan, layout: GatewayLayout) -> list[RenderedFile]:
    """rsyslog's input and file for HAProxy's lines, and logrotate's rule for the file."""
    env = environment()
    rsyslog = env.get_template("gateway-rsyslog.conf.j2").render(
        fleet=haproxy_word(plan.fleet),
        address=haproxy_word(layout.access_log_address),
        port=int(layout.access_log_port),
        log=plain_path(layout.access_log),
        group=systemd.name(layout.metrics_user),
    )
    logrotate = env.get_template("gateway-logrotate.j2").render(log=plain_path(layout.access_log))
    return [
        RenderedFile(layout.rsyslog_conf, rsyslog, "0644"),
        RenderedFile(layout.logrotate_conf, logrotate, "0644"),
    ]


def metrics_files(plan: HostPlan, layout: GatewayLayout = GATEWAY) -> list[RenderedFile]:
    """rsyslog's and logrotate's files, the mtail program and its unit: 0644 root:root (they
    hold no key: paths and names only)."""
    return [
        *access_log_files(plan, layout),
        RenderedFile(layout.metrics_program, metrics_program(plan), "0644"),
        RenderedFile(layout.metrics_unit, metrics_unit(layout), "0644"),
    ]
