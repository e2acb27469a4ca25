"""The metric names on servekit's checked list exist where they are said to: in the vLLM
stand-in's /metrics (which mirrors vLLM 0.33's names), in Debian's node exporter's and HAProxy's
own /metrics and the blackbox exporter's /probe (the real binaries, started on loopback), and in
servekit's DCGM counters file."""

from __future__ import annotations

import http.server
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from standins.vllm._engine import Engine, Knobs

from servekit.monitoring.metrics import (
    BLACKBOX_METRICS,
    DCGM_METRICS,
    HAPROXY_METRICS,
    NODE_METRICS,
    VLLM_METRICS,
    counter_fields,
    dcgm_counters,
)
from servekit.monitoring.prometheus import blackbox_config

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{| )", re.MULTILINE)
HELP = re.compile(r"^# (?:HELP|TYPE) ([A-Za-z_:][A-Za-z0-9_:]*) ", re.MULTILINE)


def names(exposition: str) -> set[str]:
    """Metric names in a Prometheus text exposition (samples and HELP/TYPE lines)."""
    return set(SAMPLE.findall(exposition)) | set(HELP.findall(exposition))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(argv: list[str], url: str) -> Iterator[str]:
    """Start `argv`, wait until `url` answers, yield its body, stop the process."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                yield httpx.get(url, timeout=2).text
                return
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, f"{argv[0]} did not answer {url}"
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_vllm_names_are_the_standins() -> None:
    engine = Engine(
        model_name="m", max_model_len=4096, max_num_seqs=8, cache_info={}, knobs=Knobs()
    )
    exposed = names(engine.render_metrics())
    assert exposed >= VLLM_METRICS, sorted(VLLM_METRICS - exposed)


def test_the_node_names_are_the_node_exporters() -> None:
    binary = shutil.which("prometheus-node-exporter")
    assert binary, "install prometheus-node-exporter (apt-get; .ci/run does)"
    port = free_port()
    argv = [binary, f"--web.listen-address=127.0.0.1:{port}"]
    with running(argv, f"http://127.0.0.1:{port}/metrics") as body:
        exposed = names(body)
    filesystem = {n for n in NODE_METRICS if n.startswith("node_filesystem_")}
    assert filesystem <= exposed, sorted(filesystem - exposed)
    # The systemd collector needs systemd's D-Bus (absent in a test container): its metric
    # name is read from the binary (collector/systemd_linux.go: namespace_systemd_unit_state).
    systemd = NODE_METRICS - filesystem
    assert systemd == {"node_systemd_unit_state"}
    assert b"unit_state" in Path(binary).read_bytes()


def test_the_haproxy_names_are_haproxys(tmp_path: Path) -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n"
        f"frontend f\n  bind 127.0.0.1:{port}\n"
        "  http-request use-service prometheus-exporter if { path /metrics }\n"
        "  default_backend b\nbackend b\n  server s1 127.0.0.1:1\n"
    )
    with running([binary, "-db", "-f", str(config)], f"http://127.0.0.1:{port}/metrics") as body:
        exposed = names(body)
    assert exposed >= HAPROXY_METRICS, sorted(HAPROXY_METRICS - exposed)
    assert 'haproxy_backend_http_responses_total{proxy="b",code="5xx"}' in body


def test_servekits_dcgm_counters_enable_every_dcgm_name() -> None:
    enabled = counter_fields(dcgm_counters())
    assert enabled >= DCGM_METRICS, sorted(DCGM_METRICS - enabled)


class OllamaRoot(http.server.BaseHTTPRequestHandler):
    """Ollama's `GET /` as its server answers it (200, "Ollama is running")."""

    def do_GET(self) -> None:
        body = b"Ollama is running"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def probe_value(body: str, name: str) -> float:
    [line] = [line for line in body.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


def test_the_blackbox_names_are_the_blackbox_exporters_and_it_probes_ollama(
    tmp_path: Path,
) -> None:
    binary = shutil.which("prometheus-blackbox-exporter")
    assert binary, "install prometheus-blackbox-exporter (apt-get; .ci/run does)"
    config = tmp_path / "blackbox.yml"
    config.write_text(blackbox_config())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OllamaRoot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ollama = f"http://127.0.0.1:{server.server_address[1]}/"
    port = free_port()
    argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    probe = f"http://127.0.0.1:{port}/probe?module=ollama&target="
    try:
        with running(argv, f"http://127.0.0.1:{port}/metrics"):
            answered = httpx.get(probe + ollama, timeout=10).text
            closed = httpx.get(probe + f"http://127.0.0.1:{free_port()}/", timeout=10).text
    finally:
        server.shutdown()
    assert names(answered) >= BLACKBOX_METRICS, sorted(BLACKBOX_METRICS - names(answered))
    assert probe_value(answered, "probe_success") == 1
    assert probe_value(closed, "probe_success") == 0


def test_the_dcgm_standin_serves_every_dcgm_name_from_servekits_counters(tmp_path: Path) -> None:
    """The host tests' stand-in DCGM exporter (tests/standins/dcgm_exporter.py) exposes what
    servekit's counters file enables, under the flags servekit's drop-in passes."""
    counters = tmp_path / "servekit-counters.csv"
    counters.write_text(dcgm_counters())
    standin = Path(__file__).parents[1] / "standins" / "dcgm_exporter.py"
    port = free_port()
    argv = [sys.executable, str(standin), "-f", str(counters), "-a", f"127.0.0.1:{port}"]
    with running(argv, f"http://127.0.0.1:{port}/metrics") as body:
        exposed = names(body)
    assert exposed >= DCGM_METRICS, sorted(DCGM_METRICS - exposed)
    assert 'DCGM_FI_DEV_XID_ERRORS{gpu="0",' in body
