"""Where the bench keeps its files and which network it uses (one place for every constant)."""

from __future__ import annotations

from pathlib import Path

CACHE_DIR = Path("/var/cache/servekit-testbench")
"""Root filesystems, built once and kept across runs."""

STATE_DIR = Path("/var/tmp/servekit-testbench")
"""Live state shared by concurrent runs: the lock, address leases, one directory per run."""

BRIDGE = "sk-br0"
SUBNET_PREFIX = "10.231.0"
GATEWAY = f"{SUBNET_PREFIX}.1"
NETMASK_BITS = 24
HOST_OCTETS = range(11, 251)
"""Last octets handed to test hosts; the name of a host follows from its address."""

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

BOOT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
