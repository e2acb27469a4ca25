"""Bounds on the waits of `servekit cloud apply` and `destroy` (no boto3: the CLI imports it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """Bounds on every wait (seconds); tests shorten the polling."""

    running_s: float = 600
    ssh_s: float = 600
    terminated_s: float = 900
    delete_s: float = 300
    poll_s: float = 5.0
