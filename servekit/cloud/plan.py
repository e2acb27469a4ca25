"""A cloud plan: the changes that would make AWS match the inventory, fixed so apply runs exactly.

Like a Terraform plan it is made after a refresh, lists each change as `+` create, `~` update,
`-/+` replace, `-` destroy (and `<=` adopt, for resources an interrupted apply of this same state
created but did not record), and carries everything apply needs: the AMI, the root volume size, the
zones and instance types in failover order. A saved plan records the state's lineage and serial;
apply refuses it once the state has moved on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from servekit.cloudstate.store import ResourceType, now

PLAN_FORMAT_VERSION = 1

Action = Literal["adopt", "create", "update", "replace", "destroy"]
SYMBOLS: dict[Action, str] = {
    "adopt": "<=",
    "create": "+",
    "update": "~",
    "replace": "-/+",
    "destroy": "-",
}


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Candidate(Model):
    """One place to try a launch: instance type, zone, and the subnet used there."""

    instance_type: str
    zone: str
    subnet_id: str


class TypeLaunch(Model):
    """How an instance type is launched: vCPUs (for quota messages) and its EFA layout."""

    vcpus: int
    efa_interfaces: int
    price_usd_hour: float | None

    @property
    def needs_elastic_ip(self) -> bool:
        """Several network interfaces forbid an automatic public address."""
        return self.efa_interfaces > 1


class GroupLaunch(Model):
    """Everything apply needs to create one node group's resources, resolved at plan time."""

    group: str
    region: str
    nodes: list[str]
    resource_name: str
    vpc_id: str
    candidates: list[Candidate]
    types: dict[str, TypeLaunch]
    ami_id: str
    ami_name: str
    ami_source: str
    root_device_name: str
    root_volume_gib: int
    root_volume_formula: str
    placement_group: bool
    spot: bool
    capacity_reservation_id: str | None
    capacity_block: bool
    ssh_user: str
    ssh_key: str
    public_key: str
    public_key_sha256: str
    ssh_cidrs: list[str]

    @property
    def instance_types(self) -> list[str]:
        return list(dict.fromkeys(c.instance_type for c in self.candidates))


class Change(Model):
    action: Action
    type: ResourceType
    name: str
    group: str
    region: str
    id: str | None = Field(None, description="the existing resource (adopt, update, destroy)")
    detail: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict, description="adopted resource")

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}"


class Orphan(Model):
    """Tagged for this fleet but not in its state: reported, never adopted or deleted."""

    type: ResourceType
    id: str
    region: str
    name: str
    lineage: str | None
    status: str


class Plan(Model):
    format_version: int = PLAN_FORMAT_VERSION
    mode: Literal["apply", "destroy"]
    fleet: str
    lineage: str | None = Field(description="the state's lineage when planned; None: no state")
    serial: int | None
    created: str = Field(default_factory=now)
    groups: list[GroupLaunch]
    changes: list[Change]
    orphans: list[Orphan] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    cost_usd_hour: float | None = None
    cost_note: str = ""

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def group(self, name: str) -> GroupLaunch:
        return next(g for g in self.groups if g.group == name)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)

    def summary(self) -> str:
        adopt = self.count("adopt")
        head = f"{adopt} to adopt, " if adopt else ""
        replace = self.count("replace")
        return (
            f"Plan: {head}{self.count('create') + replace} to add, {self.count('update')} to "
            f"change, {self.count('destroy') + replace} to destroy."
        )


def save_plan(plan: Plan, path: Path) -> None:
    """Write the plan 0600: it names key paths and addresses, like Terraform's plan files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(plan.model_dump_json(indent=2) + "\n")


def load_plan(path: Path) -> Plan:
    plan = Plan.model_validate_json(path.read_text())
    if plan.format_version != PLAN_FORMAT_VERSION:
        raise ValueError(f"{path} has plan format {plan.format_version}, not {PLAN_FORMAT_VERSION}")
    return plan


def describe(plan: Plan) -> list[str]:
    """The plan as lines a person reviews (the CLI colours them by their leading symbol)."""
    lines: list[str] = []
    for launch in plan.groups:
        if not any(c.group == launch.group and c.action != "destroy" for c in plan.changes):
            continue
        primary, *fallbacks = launch.instance_types
        zones = ", ".join(dict.fromkeys(c.zone for c in launch.candidates))
        count = len(launch.nodes)
        head = f"{launch.group}: {count} × {primary}"
        if fallbacks:
            head += f" (fallback {', '.join(fallbacks)})"
        head += f" in {launch.region}, zones {zones}"
        if launch.spot:
            head += ", spot"
        if launch.capacity_reservation_id:
            head += f", reservation {launch.capacity_reservation_id}"
        lines.append(head)
        lines.append(f"    AMI {launch.ami_id} {launch.ami_name} ({launch.ami_source})")
        lines.append(
            f"    root volume gp3 {launch.root_volume_gib} GiB = {launch.root_volume_formula}"
        )
        network = launch.types[primary]
        if network.efa_interfaces:
            eip = ", an Elastic IP each" if network.needs_elastic_ip else ""
            layout = " (ENA primary, efa-only on every card)" if network.needs_elastic_ip else ""
            lines.append(f"    network: {network.efa_interfaces} EFA interfaces{eip}{layout}")
        lines.append("")
    for change in plan.changes:
        detail = f"  {change.detail}" if change.detail else ""
        lines.append(f"{SYMBOLS[change.action]:>3} {change.address}{detail}")
    for orphan in plan.orphans:
        lines.append(
            f"  ! {orphan.type} {orphan.id} ({orphan.region}) is tagged for fleet {plan.fleet} "
            "but is not in its state: servekit neither adopts nor deletes it"
        )
    lines += [f"  note: {note}" for note in plan.notes]
    lines.append(plan.summary() if plan.has_changes else "No changes: AWS matches the inventory.")
    if plan.cost_usd_hour is not None and plan.mode == "apply":
        hourly = plan.cost_usd_hour
        lines.append(f"Cost: ${hourly:,.2f}/h, ${hourly * 24:,.2f}/day ({plan.cost_note})")
    elif plan.cost_note:
        lines.append(f"Cost: {plan.cost_note}")
    return lines
