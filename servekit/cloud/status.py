"""Drift between a fleet's state and AWS: machines missing or stopped, and resources tagged for
the fleet that its state does not list (`servekit cloud status`)."""

from __future__ import annotations

from dataclasses import dataclass

from servekit.cloud.refresh import ProviderFor, found_name, observe
from servekit.cloudstate.store import State


@dataclass(frozen=True)
class Row:
    address: str
    id: str
    region: str
    status: str
    public_ip: str | None
    private_ip: str | None
    drift: str | None


def fleet_status(
    fleet: str, state: State | None, regions: list[str], provider_for: ProviderFor
) -> list[Row]:
    """One row per recorded resource, then one per unrecorded tagged resource."""
    observed = observe(fleet, state, regions, provider_for)
    rows = []
    for record in state.resources if state else []:
        live = observed.live(record)
        status = live.status if live else "missing"
        drift = None
        if live is None:
            drift = "missing from AWS"
        elif live.status in ("stopped", "stopping"):
            drift = f"{live.status}"
        attributes = live.attributes if live else {}
        rows.append(
            Row(
                address=record.address,
                id=record.id,
                region=record.region,
                status=status,
                public_ip=attributes.get("public_ip") or record.attributes.get("public_ip"),
                private_ip=attributes.get("private_ip") or record.attributes.get("private_ip"),
                drift=drift,
            )
        )
    adoptable = {f.id for f in observed.adoptable().values()}
    for found in observed.unrecorded():
        why = (
            "not in the state (an interrupted apply made it: the next apply adopts it)"
            if found.id in adoptable
            else "tagged for this fleet but not in the state (servekit leaves it alone)"
        )
        rows.append(
            Row(
                address=f"{found.type}.{found_name(found)}",
                id=found.id,
                region=found.region,
                status=found.status,
                public_ip=found.attributes.get("public_ip"),
                private_ip=found.attributes.get("private_ip"),
                drift=why,
            )
        )
    return rows
