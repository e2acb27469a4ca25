"""Machines: SSH hosts, the local machine, AWS node groups, and the GPUs they hold."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from servekit import catalog
from servekit.catalog.regions import region_problem, zone_problem
from servekit.errors import invalid
from servekit.fields import (
    Address,
    ControlPath,
    ReservationId,
    SubnetId,
    Text,
    UserName,
)
from servekit.spec.base import Name, Port, Spec


class Gpu(Spec):
    """GPUs in one machine: a catalog model (or the name nvidia-smi prints) and how many."""

    model: Text
    count: int = Field(1, ge=1, le=16)
    memory_gib: float | None = Field(None, gt=0, description="unified memory of an Apple machine")

    @field_validator("model")
    @classmethod
    def _known(cls, model: str) -> str:
        try:
            catalog.gpu(model)
        except catalog.CatalogError as error:
            raise invalid(str(error), "use a GPU from servekit/catalog/gpus.toml") from None
        return model

    @model_validator(mode="after")
    def _apple_memory(self) -> Gpu:
        if self.info.apple and self.memory_gib is None:
            raise invalid(
                f"{self.info.name} shares memory with the CPU; servekit needs its size",
                f"Gpu(model={self.model!r}, memory_gib=36)",
            )
        return self

    @property
    def info(self) -> catalog.GpuInfo:
        return catalog.gpu(self.model)


class SshHost(Spec):
    """A machine reached over SSH at a fixed address."""

    kind: Literal["ssh"] = "ssh"
    name: Name
    address: Address
    cluster_address: ipaddress.IPv4Address | None = Field(
        None, description="address on the network between nodes (multi-node); default: address"
    )
    ssh_user: UserName | None = None
    ssh_port: Port = 22
    ssh_key: ControlPath | None = None
    sudo: bool = True
    os: Literal["linux", "macos"] = "linux"
    gpu: Gpu | None = None


class LocalHost(Spec):
    """The machine servekit runs on (`pyinfra @local`): a laptop or a single box."""

    kind: Literal["local"] = "local"
    name: Name = "local"
    os: Literal["linux", "macos"] = "linux"
    sudo: bool | None = Field(
        None, description="default: on Linux (system install), never on macOS"
    )
    gpu: Gpu | None = None


def _network(value: Any) -> Any:
    """One clear refusal for a bad network, instead of one per IP version."""
    if not isinstance(value, str):
        return value
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as error:
        raise invalid(
            f"{value!r} is not an IPv4 or IPv6 network ({error})",
            "give a network address with its prefix, e.g. '203.0.113.0/24' or '2001:db8::/48'",
        ) from None


SshNetwork = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]

# Networks shorter than these (IPv4 /0-/7, IPv6 /0-/15) admit a large share of the internet:
# `ssh_cidrs` accepts them only with `ssh_from_anywhere=True`.
WIDEST_SSH_PREFIX = {4: 8, 6: 16}


class AwsNodeGroup(Spec):
    """`count` identical AWS instances, created by `servekit cloud apply` and named NAME-0.."""

    kind: Literal["aws"] = "aws"
    name: Name
    instance_type: str
    count: int = Field(1, ge=1, le=64)
    region: str = Field(min_length=1, description="an EC2 region, e.g. us-east-1")
    availability_zones: list[str] = Field(
        default_factory=list, description="zone names or IDs of the region, in order of preference"
    )
    spot: bool = False
    fallback_instance_types: list[str] = Field(default_factory=list)
    os: Literal["linux"] = "linux"
    ssh_user: UserName = "ubuntu"
    ssh_key: Path = Field(description="private key; its .pub is installed on the instances")
    # ssh_from_anywhere comes first: the ssh_cidrs check reads it (pydantic validates in order).
    ssh_from_anywhere: bool = Field(
        False, description="allow ssh_cidrs that admit the whole internet (0.0.0.0/0, ::/0)"
    )
    ssh_cidrs: list[SshNetwork] = Field(
        min_length=1, description="who may SSH in (IPv4 or IPv6 networks)"
    )
    root_volume_gib: int | None = Field(None, ge=30, le=16384)
    capacity_reservation_id: ReservationId | None = None
    capacity_block: bool = False
    subnet_ids: list[SubnetId] = Field(default_factory=list)

    @field_validator("region")
    @classmethod
    def _known_region(cls, region: str) -> str:
        problem = region_problem(region)
        if problem is not None:
            raise invalid(*problem)
        return region

    @field_validator("availability_zones")
    @classmethod
    def _zones_of_the_region(cls, zones: list[str], info: ValidationInfo) -> list[str]:
        region = info.data.get("region")
        if not isinstance(region, str):
            return zones  # the region itself was refused: one problem, not one per zone
        for zone in zones:
            problem = zone_problem(region, zone)
            if problem is not None:
                raise invalid(*problem)
        return zones

    @field_validator("ssh_cidrs")
    @classmethod
    def _ssh_not_from_everywhere(
        cls, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], info: ValidationInfo
    ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        wide = [str(n) for n in networks if n.prefixlen < WIDEST_SSH_PREFIX[n.version]]
        if wide and not info.data.get("ssh_from_anywhere"):
            raise invalid(
                f"{', '.join(wide)} lets (a large part of) the whole internet try to log in to "
                "these machines",
                "give the networks you connect from (e.g. your office's /24), or set "
                "ssh_from_anywhere=True to accept it knowingly",
            )
        return networks

    @field_validator("instance_type", "fallback_instance_types")
    @classmethod
    def _known_types(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            try:
                catalog.instance_type(name)
            except catalog.CatalogError as error:
                raise invalid(
                    str(error), "use a GPU instance type from servekit/catalog/aws.toml"
                ) from None
        return value

    @model_validator(mode="after")
    def _capacity_block(self) -> AwsNodeGroup:
        if self.capacity_block and not self.capacity_reservation_id:
            raise invalid(
                "a Capacity Block launch needs its reservation id",
                "set capacity_reservation_id='cr-...'",
            )
        return self

    @property
    def gpu(self) -> Gpu:
        itype = catalog.instance_type(self.instance_type)
        return Gpu(model=itype.gpu, count=itype.gpus)

    def node_names(self) -> list[str]:
        return [f"{self.name}-{index}" for index in range(self.count)]


Machine = Annotated[SshHost | LocalHost | AwsNodeGroup, Field(discriminator="kind")]
