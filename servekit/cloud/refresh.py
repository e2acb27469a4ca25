"""Refresh: what AWS holds for a fleet, found by its tags and by the ids its state records.

Refresh never writes the state (Terraform's `-refresh-only` lesson: a failed lookup must not drop
resources). Everything servekit creates is tagged with the fleet and the state's lineage, so the
refresh finds it by tag; diff.py then compares it with the state and the inventory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import get_args

from servekit.cloud.aws import AwsProvider
from servekit.cloud.desired import Tag
from servekit.cloud.found import Found
from servekit.cloud.plan import Orphan
from servekit.cloudstate.store import Resource, ResourceType, State

ProviderFor = Callable[[str], AwsProvider]
RESOURCE_TYPES: tuple[ResourceType, ...] = get_args(ResourceType)  # in dependency order
GONE_STATUSES = ("shutting-down", "terminated")
GROUP_LEVEL: tuple[ResourceType, ...] = (
    "aws_key_pair",
    "aws_security_group",
    "aws_placement_group",
)


def found_name(found: Found) -> str:
    """The group (key, security and placement group) or node (instance, EIP) it belongs to."""
    if found.type in GROUP_LEVEL:
        return found.tags.get(Tag.GROUP, found.id)
    return found.tags.get(Tag.NODE, found.id)


@dataclass
class Observed:
    """What AWS holds for the fleet: found by tag, and the state's resources by id."""

    found: dict[tuple[ResourceType, str], Found]
    lineage: str | None
    recorded: set[tuple[ResourceType, str]]

    def live(self, resource: Resource) -> Found | None:
        found = self.found.get((resource.type, resource.id))
        return None if found is None or found.status in GONE_STATUSES else found

    def unrecorded(self) -> list[Found]:
        return [
            f
            for key, f in self.found.items()
            if key not in self.recorded and f.status not in GONE_STATUSES
        ]

    def adoptable(self) -> dict[tuple[ResourceType, str], Found]:
        """Unrecorded resources an interrupted apply of this state made (one per name)."""
        adoptable: dict[tuple[ResourceType, str], Found] = {}
        if self.lineage is None:
            return adoptable
        for found in self.unrecorded():
            if found.tags.get(Tag.LINEAGE) == self.lineage:
                adoptable.setdefault((found.type, found_name(found)), found)
        return adoptable

    def orphans(self, adopted: set[str]) -> list[Orphan]:
        return [
            Orphan(
                type=f.type,
                id=f.id,
                region=f.region,
                name=found_name(f),
                lineage=f.tags.get(Tag.LINEAGE),
                status=f.status,
            )
            for f in self.unrecorded()
            if f.id not in adopted
        ]


def regions_of(declared: Iterable[str], state: State | None) -> list[str]:
    """The declared regions, then those the state still has resources in."""
    regions = [*declared, *(r.region for r in state.resources)] if state else [*declared]
    return list(dict.fromkeys(regions))


def observe(
    fleet: str, state: State | None, regions: list[str], provider_for: ProviderFor
) -> Observed:
    found: dict[tuple[ResourceType, str], Found] = {}
    for region in regions:
        for resource in provider_for(region).find(Tag.FLEET, fleet):
            found[(resource.type, resource.id)] = resource
    resources = state.resources if state else []
    for region in regions:
        for type_ in RESOURCE_TYPES:
            missing = [
                r.id
                for r in resources
                if r.type == type_ and r.region == region and (type_, r.id) not in found
            ]
            for resource in provider_for(region).lookup(type_, missing):
                found[(resource.type, resource.id)] = resource
    return Observed(
        found=found,
        lineage=state.lineage if state else None,
        recorded={(r.type, r.id) for r in resources},
    )
