"""The bridge test hosts attach to, with NAT to the outside; created once, shared, never removed.

Several runs may use it at once, so it is only ever added to, idempotently, under the bench lock.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import settings

SUBNET = f"{settings.SUBNET_PREFIX}.0/{settings.NETMASK_BITS}"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True)


def _ensure_rule(table: str, chain: str, *rule: str) -> None:
    if _run("iptables", "-w", "-t", table, "-C", chain, *rule).returncode != 0:
        subprocess.run(["iptables", "-w", "-t", table, "-I", chain, "1", *rule], check=True)


def ensure_bridge(name: str = settings.BRIDGE) -> None:
    """Create the bridge, its address, forwarding and MASQUERADE, each only if missing."""
    if not Path(f"/sys/class/net/{name}").exists():
        added = _run("ip", "link", "add", name, "type", "bridge")
        if added.returncode != 0 and not Path(f"/sys/class/net/{name}").exists():
            raise RuntimeError(f"cannot create bridge {name}: {added.stderr.strip()}")
    address = f"{settings.GATEWAY}/{settings.NETMASK_BITS}"
    if address not in _run("ip", "-o", "-4", "addr", "show", "dev", name).stdout:
        subprocess.run(["ip", "addr", "add", address, "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    _ensure_rule("nat", "POSTROUTING", "-s", SUBNET, "!", "-o", name, "-j", "MASQUERADE")
    # Hosts reach the outside and each other even where the FORWARD policy drops (e.g. Docker).
    _ensure_rule("filter", "FORWARD", "-i", name, "-j", "ACCEPT")
    _ensure_rule(
        "filter",
        "FORWARD",
        "-o",
        name,
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    )


def remove_stale_veth(host_name: str) -> bool:
    """Delete the bridge-side veth `vb-<host>` left by a container that died uncleanly.

    Called for an address this run has just leased (so no live host owns that name); without it
    systemd-nspawn fails with "Failed to add new veth interfaces: File exists".
    """
    link = f"vb-{host_name}"
    if not Path(f"/sys/class/net/{link}").exists():
        return False
    _run("ip", "link", "delete", link)
    return True
