"""The exporters' files on every Linux host of a fleet with monitoring, from its plan
(`HostPlan.exporters`): the arguments Debian's node exporter reads, and, on GPU hosts with
`GpuSetup(dcgm=True)`, a drop-in that makes NVIDIA's DCGM exporter listen where the monitoring
host reaches it and read servekit's counters file. Pure: the deploy writes what
`exporter_files` returns; the firewall (servekit.firewall) admits only the monitoring host to
both ports."""

from __future__ import annotations

import ipaddress

from servekit.hostplan import ExportersPlan, HostPlan
from servekit.monitoring.layout import (
    DCGM_EXPORTER_BINARY,
    MONITORING,
    MonitoringLayout,
)
from servekit.monitoring.metrics import dcgm_counters
from servekit.templating import RenderedFile

HEADER = "# Written by servekit (deploys/monitoring.py) from the fleet's plan: changes are lost.\n"

NODE_UNITS = "(nvidia-fabricmanager|nvidia-persistenced|vllm-.*|ray-.*|haproxy|ollama)[.]service"
"""Units whose state the node exporter reports (`node_systemd_unit_state`; FabricManagerDown
reads nvidia-fabricmanager's). Flags: `prometheus-node-exporter --help` (1.5),
https://github.com/prometheus/node_exporter#collectors (systemd is off by default)."""


def listen(address: str, port: int) -> str:
    """`address:port` for a Go listener (IPv6 in brackets); ValueError unless an IP literal."""
    ip = ipaddress.ip_address(address)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def node_exporter_defaults(exporters: ExportersPlan) -> str:
    """/etc/default/prometheus-node-exporter (Debian's unit runs `prometheus-node-exporter
    $ARGS`): where the monitoring host reaches this host, and the systemd collector for the
    units above."""
    args = [
        f"--web.listen-address={listen(exporters.listen_address, exporters.node_port)}",
        "--collector.systemd",
        f"--collector.systemd.unit-include={NODE_UNITS}",
    ]
    return f'{HEADER}ARGS="{" ".join(args)}"\n'


def dcgm_dropin(exporters: ExportersPlan, layout: MonitoringLayout = MONITORING) -> str:
    """A drop-in for NVIDIA's unit: its ExecStart passes the counters file with `-f`, so it is
    replaced; `-a` is the listen address (`dcgm-exporter --help`: `--collectors/-f`,
    `--address/-a`, default `:9400`; https://github.com/NVIDIA/dcgm-exporter/blob/main/pkg/cmd/app.go)."""
    assert exporters.dcgm_port is not None
    address = listen(exporters.listen_address, exporters.dcgm_port)
    return (
        f"{HEADER}[Service]\nExecStart=\n"
        f"ExecStart={DCGM_EXPORTER_BINARY} -f {layout.dcgm_counters} -a {address}\n"
    )


def exporter_files(plan: HostPlan, layout: MonitoringLayout = MONITORING) -> list[RenderedFile]:
    """The node exporter's ARGS file; with a DCGM exporter, its drop-in and counters (0644
    root:root: nothing secret). Empty without monitoring or off Linux."""
    exporters = plan.exporters
    if exporters is None:
        return []
    files = [RenderedFile(layout.node_exporter_defaults, node_exporter_defaults(exporters), "0644")]
    if exporters.dcgm_port is not None:
        files += [
            RenderedFile(layout.dcgm_counters, dcgm_counters(), "0644"),
            RenderedFile(layout.dcgm_dropin, dcgm_dropin(exporters, layout), "0644"),
        ]
    return files
