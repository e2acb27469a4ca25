"""What a fleet's AWS node groups ask for, worked out offline from the inventory alone.

Names, tags, the SSH public key, the cost, and the weights the root volume must hold. The root
volume is sized as::

    root GiB = AMI snapshot + 1.05 × weights of every checkpoint the node serves + 30

where the weights come from the fleet plan (`planner.weights_bytes` at the planned
quantization), 5% covers tokenizer and config files, and 30 GiB holds the vLLM virtualenv
(torch and CUDA wheels, about 10 GiB), pip/uv caches, compile caches and logs. The snapshot size
is read from the AMI at plan time. A declared `root_volume_gib` wins.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from servekit import catalog
from servekit.errors import FleetError, Problem
from servekit.placement import FleetPlan, plan_fleet
from servekit.spec import AwsNodeGroup, Fleet

ENGINE_INSTALL_GIB = 30
WEIGHTS_HEADROOM = 1.05
MANAGED_BY = "servekit"
PUBLIC_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384")


class Tag:
    """Tag keys on everything servekit creates (`managed-by=servekit` plus these)."""

    MANAGED_BY = "managed-by"
    FLEET = "servekit-fleet"
    GROUP = "servekit-group"
    NODE = "servekit-node"
    NODE_INDEX = "servekit-node-index"
    ROLE = "servekit-role"
    LINEAGE = "servekit-lineage"


@dataclass(frozen=True)
class GroupIntent:
    """One AWS node group as the inventory declares it, with what was derived offline."""

    fleet: str
    group: AwsNodeGroup
    weights_gib: float
    public_key: str

    @property
    def nodes(self) -> list[str]:
        return self.group.node_names()

    @property
    def resource_name(self) -> str:
        """AWS name of the group's security group, placement group and key pair."""
        return f"servekit-{self.fleet}-{self.group.name}"

    @property
    def instance_types(self) -> list[str]:
        return [self.group.instance_type, *self.group.fallback_instance_types]

    @property
    def wants_placement_group(self) -> bool:
        return self.group.count > 1

    @property
    def public_key_sha256(self) -> str:
        return hashlib.sha256(self.public_key.split()[1].encode()).hexdigest()

    @property
    def ssh_cidrs(self) -> list[str]:
        return sorted(str(cidr) for cidr in self.group.ssh_cidrs)

    def needed_root_gib(self, snapshot_gib: int) -> int:
        """The formula of this module's docstring."""
        return math.ceil(snapshot_gib + WEIGHTS_HEADROOM * self.weights_gib + ENGINE_INSTALL_GIB)

    def root_volume_gib(self, snapshot_gib: int) -> int:
        declared = self.group.root_volume_gib
        return self.needed_root_gib(snapshot_gib) if declared is None else declared

    def root_volume_formula(self, snapshot_gib: int) -> str:
        if self.group.root_volume_gib is not None:
            return "declared root_volume_gib"
        return (
            f"{snapshot_gib} AMI + {WEIGHTS_HEADROOM} × {self.weights_gib:.1f} weights "
            f"+ {ENGINE_INSTALL_GIB} engine"
        )

    def cost_usd_hour(self) -> float | None:
        price = catalog.instance_type(self.group.instance_type).price_usd_hour
        return None if price is None else price * self.group.count


def resource_tags(
    fleet: str, group: str, lineage: str, node: str | None = None, index: int = 0
) -> dict[str, str]:
    """Tags of a group's resources; a node's also name it, its index and role (head: index 0)."""
    tags = {
        Tag.MANAGED_BY: MANAGED_BY,
        Tag.FLEET: fleet,
        Tag.GROUP: group,
        Tag.LINEAGE: lineage,
        "Name": f"{fleet}-{node or group}",
    }
    if node is not None:
        tags |= {
            Tag.NODE: node,
            Tag.NODE_INDEX: str(index),
            Tag.ROLE: "head" if index == 0 else "worker",
        }
    return tags


def read_public_key(fleet: str, group: AwsNodeGroup) -> str:
    """The OpenSSH public key beside the group's private key (`KEY.pub`)."""
    public = Path(f"{group.ssh_key.expanduser()}.pub")
    field = f"machines.{group.name}.ssh_key"
    if not public.is_file():
        fix = f"create the key pair: ssh-keygen -t ed25519 -N '' -f {group.ssh_key}"
        raise FleetError([Problem(field, f"{public} does not exist", fix)], fleet=fleet)
    line = public.read_text().strip()
    if not line.startswith(PUBLIC_KEY_TYPES) or len(line.split()) < 2:
        fix = f"regenerate it: ssh-keygen -y -f {group.ssh_key} > {public}"
        raise FleetError(
            [Problem(field, f"{public} is not an OpenSSH public key", fix)], fleet=fleet
        )
    return line


def node_weights_gib(plan: FleetPlan, node: str) -> float:
    """GiB of weights a node downloads: each distinct checkpoint it serves, counted once."""
    host = plan.hosts[node]
    checkpoints = {v.checkpoint: v.weights_gib for v in host.vllm}
    if host.ollama:
        checkpoints |= {
            tag: model.weights_gib
            for tag, model in zip(host.ollama.models, host.ollama.plans, strict=True)
        }
    return sum(checkpoints.values())


def check_fallbacks(fleet: Fleet, group: AwsNodeGroup) -> None:
    """A fallback instance type must serve the fleet too, or it would launch useless nodes."""
    for fallback in group.fallback_instance_types:
        machines = [
            m.model_copy(update={"instance_type": fallback}) if m is group else m
            for m in fleet.machines
        ]
        try:
            plan_fleet(fleet.model_copy(update={"machines": machines}))
        except FleetError as error:
            reasons = "; ".join(p.message for p in error.problems)
            raise FleetError(
                [
                    Problem(
                        f"machines.{group.name}.fallback_instance_types",
                        f"{fallback} cannot serve this fleet: {reasons}",
                        f"remove {fallback}, or choose a larger fallback",
                    )
                ],
                fleet=fleet.name,
            ) from None


def fleet_intents(fleet: Fleet) -> list[GroupIntent]:
    """Every AWS node group of the fleet; FleetError when one cannot be created as declared."""
    plan = plan_fleet(fleet)
    intents = []
    for group in fleet.machines:
        if not isinstance(group, AwsNodeGroup):
            continue
        check_fallbacks(fleet, group)
        weights = max(node_weights_gib(plan, node) for node in group.node_names())
        intents.append(GroupIntent(fleet.name, group, weights, read_public_key(fleet.name, group)))
    return intents
