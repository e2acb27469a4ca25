"""What a doctor check reports: one row per check and host, and a host's findings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Verdict = Literal["ok", "warn", "fail", "skip"]
"""ok: as expected; warn: works, but worth a look; fail: a deploy or the engine will not work;
skip: the check does not apply here (say why in `found`)."""


@dataclass(frozen=True)
class Check:
    """One check on one host: what was expected, what was found, and if it is not ok, the fix
    (a command or a change to the fleet the user can act on)."""

    host: str
    check: str
    expected: str
    found: str
    verdict: Verdict
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return asdict(self)

    @property
    def failed(self) -> bool:
        return self.verdict == "fail"


@dataclass
class HostFindings:
    """A host's checks, and the facts checks across hosts compare (interface MTUs, clock
    offset, cluster address...), keyed by the group that gathered them."""

    host: str
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
