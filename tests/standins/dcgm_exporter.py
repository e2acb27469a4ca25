#!/usr/bin/env python3
"""A stand-in for NVIDIA's `dcgm-exporter` on a GPU-less test host (stdlib only, installed as
/usr/bin/dcgm-exporter under the unit NVIDIA's package ships).

It takes the flags servekit's drop-in passes (`-f/--collectors FILE`, `-a/--address HOST:PORT`,
default `:9400`, as in https://github.com/NVIDIA/dcgm-exporter/blob/main/pkg/cmd/app.go) and
serves `/metrics` with one gauge per field the counters file enables, per GPU, labelled as the
real exporter labels them (`gpu`, `UUID`, `device`, `modelName`, `Hostname`). The metric names
are therefore the counters file's own (servekit's `templates/monitoring/dcgm-counters.csv`).
GPUs: the count in /etc/fake-nvidia-smi (the test's nvidia-smi), else 1. Values: healthy
defaults, overridden per field by /etc/dcgm-standin.json (`{"DCGM_FI_DEV_XID_ERRORS": 79}`), read
at every scrape, so a test makes an Xid or ECC error appear without restarting anything.
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
from pathlib import Path

OVERRIDES = Path("/etc/dcgm-standin.json")
FAKE_SMI = Path("/etc/fake-nvidia-smi")
HEALTHY = {
    "DCGM_FI_DEV_GPU_TEMP": 41.0,
    "DCGM_FI_DEV_POWER_USAGE": 62.5,
    "DCGM_FI_DEV_GPU_UTIL": 3.0,
    "DCGM_FI_DEV_FB_USED": 1024.0,
    "DCGM_FI_DEV_FB_FREE": 80000.0,
    "DCGM_FI_DEV_FABRIC_MANAGER_STATUS": 3.0,  # DcgmFMStatusSuccess
}


def fields(counters: Path) -> list[str]:
    """The fields a counters file enables (`name, type, help` lines; `#` comments)."""
    rows = (line.split(",", 1)[0].strip() for line in counters.read_text().splitlines())
    return [row for row in rows if row and not row.startswith("#")]


def gpu_count() -> int:
    if FAKE_SMI.exists():
        for line in FAKE_SMI.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "count" and value.strip().isdigit():
                return int(value)
    return 1


def exposition(names: list[str]) -> str:
    overrides = json.loads(OVERRIDES.read_text()) if OVERRIDES.exists() else {}
    host = socket.gethostname()
    lines = []
    for name in names:
        lines += [f"# HELP {name} stand-in for DCGM field {name}.", f"# TYPE {name} gauge"]
        for gpu in range(gpu_count()):
            labels = (
                f'gpu="{gpu}",UUID="GPU-standin-{gpu}",device="nvidia{gpu}",'
                f'modelName="NVIDIA A100-SXM4-80GB",Hostname="{host}"'
            )
            value = float(overrides.get(name, HEALTHY.get(name, 0.0)))
            lines.append(f"{name}{{{labels}}} {value:g}")
    return "\n".join(lines) + "\n"


def handler(names: list[str]) -> type[http.server.BaseHTTPRequestHandler]:
    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = exposition(names).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Metrics


def main() -> None:
    parser = argparse.ArgumentParser(prog="dcgm-exporter")
    parser.add_argument("-f", "--collectors", default="/etc/dcgm-exporter/default-counters.csv")
    parser.add_argument("-a", "--address", default=":9400")
    args = parser.parse_args()
    names = fields(Path(args.collectors))  # a missing file fails, as the real exporter does
    host, _, port = args.address.rpartition(":")
    host = host.strip("[]")
    server_class = http.server.ThreadingHTTPServer
    if ":" in host:
        server_class.address_family = socket.AF_INET6
    server = server_class((host or "0.0.0.0", int(port)), handler(names))
    server.serve_forever()


if __name__ == "__main__":
    main()
