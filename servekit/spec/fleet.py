"""The `Fleet`: machines, served models and their surroundings, checked as a whole."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from pydantic import (
    Field,
    model_validator,
)

from servekit import catalog
from servekit.errors import FleetError
from servekit.spec.base import Name, SecretRef, Spec
from servekit.spec.checks import check_fleet
from servekit.spec.machines import AwsNodeGroup, Gpu, LocalHost, Machine, SshHost
from servekit.spec.serving import OllamaSettings, Serve
from servekit.spec.sources import GpuSetup, Sources, Versions
from servekit.spec.surroundings import Gateway, Monitoring


class Fleet(Spec):
    """Everything servekit manages for one team: machines, served models, and their surroundings.

    The outermost object: it raises its FleetError where it is built, with every problem of the
    objects inside it at their position.
    """

    _raise_at_once: ClassVar[bool] = True

    name: Name
    machines: list[Machine] = Field(min_length=1)
    serve: list[Serve] = Field(default_factory=list)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    gateway: Gateway | None = None
    monitoring: Monitoring | None = None
    engine_api_key: SecretRef | None = Field(
        None, description="VLLM_API_KEY the engines require (the gateway holds it too)"
    )
    sources: Sources = Field(default_factory=Sources)
    versions: Versions = Field(default_factory=Versions)
    gpu_setup: GpuSetup = Field(default_factory=GpuSetup)

    @model_validator(mode="after")
    def _consistent(self) -> Fleet:
        problems = check_fleet(self)
        if problems:
            raise FleetError(problems, fleet=self.name)
        return self

    def host_names(self) -> list[str]:
        """Every host of the fleet, node groups expanded (NAME-0, NAME-1, ...)."""
        names: list[str] = []
        for machine in self.machines:
            names += machine.node_names() if isinstance(machine, AwsNodeGroup) else [machine.name]
        return names

    def machine_of(self, host: str) -> SshHost | LocalHost | AwsNodeGroup:
        for machine in self.machines:
            if machine.name == host or (
                isinstance(machine, AwsNodeGroup) and host in machine.node_names()
            ):
                return machine
        raise KeyError(host)

    def gpu_of(self, host: str) -> Gpu | None:
        return self.machine_of(host).gpu

    def serve_name(self, index: int) -> str:
        """A served model's name: declared, or derived from its model (unique in the fleet)."""
        serve = self.serve[index]
        return serve.name or _derived_serve_names(self)[index]

    def hosts_of(self, serve: Serve) -> list[str]:
        """The hosts a served model may run on, in declaration order."""
        if serve.hosts is None:
            wanted = self.host_names()
            if serve.engine == "vllm":
                wanted = [h for h in wanted if (g := self.gpu_of(h)) and not g.info.apple]
            return wanted
        hosts: list[str] = []
        for ref in serve.hosts:
            machine = self.machine_of(ref)
            if isinstance(machine, AwsNodeGroup) and ref == machine.name:
                hosts += machine.node_names()
            else:
                hosts.append(ref)
        return hosts


def _derived_serve_names(fleet: Fleet) -> list[str]:
    names = []
    for serve in fleet.serve:
        if serve.name:
            names.append(serve.name)
            continue
        found = catalog.find_model(serve.model)
        base = found.name if found else serve.model.rsplit("/", 1)[-1]
        slug = "".join(c if c.isalnum() else "-" for c in base.lower()).strip("-")
        names.append("-".join(part for part in slug.split("-") if part)[:40].strip("-"))
    counts = Counter(names)
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(f"{name[:37]}-{seen[name]}" if counts[name] > 1 else name)
    return unique
