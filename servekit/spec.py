"""The fleet schema: one declaration of machines, what they serve, and what surrounds them.

An inventory file builds a `Fleet`; `servekit plan`, `servekit cloud` and the pyinfra deploys all
read it. Validation here is structural (names, references, security rules), and every value that
reaches a shell, a path, a unit, nftables, apt or a URL has a type from servekit/fields.py; no
string anywhere holds a control character. Planning (servekit/placement.py) then checks that each
model fits its hardware and places ports (never the SSH port, never inside another service's
range, never below 1024 for an engine); secrets are checked when pyinfra loads the inventory
(servekit/inventory.py). Every error names the field (at its position: `serve[1].port`), the fix,
and the inventory line that declared it.

Example::

    Fleet(
        name="single-a100",
        machines=[SshHost(name="gpu1", address="10.0.0.5", gpu=Gpu(model="A100-80GB"))],
        serve=[Serve(model="llama-3.1-8b-instruct")],
        engine_api_key=SecretRef(file="~/.config/servekit/engine.key"),
    )
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from servekit import catalog
from servekit.catalog.regions import region_problem, zone_problem
from servekit.errors import FleetError, Problem, from_validation_error, invalid, user_site
from servekit.fields import (
    Address,
    BucketName,
    ControlPath,
    EnvName,
    HostDir,
    KeepAlive,
    KeyPrefix,
    ModelName,
    OllamaVersion,
    Origin,
    PrometheusDuration,
    Region,
    ReservationId,
    Revision,
    SubnetId,
    Text,
    Url,
    UserName,
    control_character,
)

# What `from servekit.spec import *` gives an inventory: the schema, nothing else. pyinfra reads
# every list or tuple an inventory module holds as a host group, so no tuple may leak in.
__all__ = [
    "AwsNodeGroup",
    "Fleet",
    "Gateway",
    "Gpu",
    "GpuSetup",
    "HuggingFace",
    "LocalHost",
    "LocalPath",
    "Monitoring",
    "OllamaSettings",
    "S3Bucket",
    "SecretRef",
    "Serve",
    "Sources",
    "SshHost",
    "Versions",
]

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
Port = Annotated[int, Field(ge=1, le=65535)]

VLLM_PORT = 8000
OLLAMA_PORT = 11434
VLLM_MASTER_PORT = 29501
RAY_PORT = 6379
RAY_FIXED_PORTS = {
    "node-manager-port": 6380,
    "object-manager-port": 6381,
    "dashboard-agent-grpc-port": 6382,
    "metrics-export-port": 6383,
    "runtime-env-agent-port": 6384,
    "dashboard-agent-listen-port": 52365,
}
RAY_WORKER_PORTS = (10002, 19999)
"""Ray's ports are pinned so that the firewall can admit them from the replica's nodes only; a
Ray-backed replica claims all of them on each of its hosts (servekit/placement.py)."""
NODE_EXPORTER_PORT = 9100
DCGM_EXPORTER_PORT = 9400


def _strings(value: object, path: str) -> Iterator[tuple[str, str]]:
    """Every string inside a field value (lists, dicts, paths), with its position."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, PurePath):
        yield path, str(value)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, path)
            yield from _strings(item, f"{path}.{key}")


class _Invalid:
    """Stands in for an invalid Spec while the enclosing object validates: its own problems are
    reported from the carrier, and the enclosing rules never read an invalid value."""


_INVALID = _Invalid()


def _without_carriers(value: Any) -> Any:
    if isinstance(value, Spec) and value.carried_problems:
        return _INVALID
    if isinstance(value, list | tuple):
        return type(value)(_without_carriers(item) for item in value)
    if isinstance(value, dict):
        return {key: _without_carriers(item) for key, item in value.items()}
    return value


def _carriers(value: object, path: str) -> Iterator[tuple[str, Spec]]:
    """Invalid Specs inside a field value, with their position."""
    if isinstance(value, Spec) and value.carried_problems:
        yield path, value
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _carriers(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _carriers(item, f"{path}.{key}")


class Spec(BaseModel):
    """Base of every schema type: unknown fields are errors, values are immutable, and no string
    anywhere (lists and paths included) holds a control character.

    An invalid Spec does not raise where it is built: it carries its problems, so that the Fleet
    it is part of reports them at their position (`serve[1].port`, not `Serve.port`) together
    with every other problem, and with the inventory line that declared it. A carrier used on its
    own (any field read, or `check()`) raises its FleetError then. `Fleet` itself raises at once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    _raise_at_once: ClassVar[bool] = False

    def __init__(self, **data: Any) -> None:
        where = user_site()
        carriers = [found for key, value in data.items() for found in _carriers(value, key)]
        nested = [
            p.at(path, spec.declared_at) for path, spec in carriers for p in spec.carried_problems
        ]
        problems: list[Problem] = []
        try:
            super().__init__(**{key: _without_carriers(value) for key, value in data.items()})
        except ValidationError as error:
            problems = [
                p
                for p in from_validation_error(
                    error, known_fields=_known_fields(type(self))
                ).problems
                if not any(p.field == path for path, _spec in carriers)
            ]
        except FleetError as error:  # cross-field rules (Fleet) report several problems at once
            problems = error.problems
        problems = nested + problems
        if not problems:
            object.__setattr__(self, "__pydantic_private__", {"_where": where, "_problems": ()})
            return
        if self._raise_at_once:
            fleet = data.get("name") if isinstance(data.get("name"), str) else None
            raise FleetError(problems, fleet=fleet, where=where)
        # A carrier: only its discriminator is readable (tagged unions need it), nothing else.
        kind = type(self).model_fields.get("kind")
        state = {"kind": data.get("kind", kind.default)} if kind is not None else {}
        object.__setattr__(self, "__dict__", state)
        object.__setattr__(self, "__pydantic_fields_set__", set(state))
        object.__setattr__(self, "__pydantic_extra__", None)
        object.__setattr__(
            self, "__pydantic_private__", {"_where": where, "_problems": tuple(problems)}
        )

    # Plain dicts inside a Fleet are validated by pydantic itself (errors at their position), not
    # through this __init__: pydantic skips an __init__ marked as its own (pydantic/main.py).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @field_validator("*", mode="after")
    @classmethod
    def _one_line(cls, value: Any, info: ValidationInfo) -> Any:
        for path, text in _strings(value, ""):
            bad = control_character(text)
            if bad is not None:
                raise invalid(
                    f"{path.lstrip('.') + ' ' if path else ''}contains the control character "
                    f"{bad} (a newline or similar)",
                    "write the value on one line, without control characters",
                )
        return value

    @property
    def carried_problems(self) -> tuple[Problem, ...]:
        """The problems of an invalid Spec (empty when it is valid)."""
        private = object.__getattribute__(self, "__pydantic_private__") or {}
        return tuple(private.get("_problems", ()))

    @property
    def declared_at(self) -> str:
        """FILE:LINE of the statement that built this object (the inventory line)."""
        private = object.__getattribute__(self, "__pydantic_private__") or {}
        return str(private.get("_where", ""))

    def check(self) -> None:
        """Raise the FleetError an invalid Spec carries (its fields named from its class)."""
        if self.carried_problems:
            name = type(self).__name__
            raise FleetError([p.at(name) for p in self.carried_problems], where=self.declared_at)

    def __getattr__(self, name: str) -> Any:
        if name in type(self).model_fields and self.carried_problems:
            self.check()
        return super().__getattr__(name)  # type: ignore[misc]

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        self.check()
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs: Any) -> str:
        self.check()
        return super().model_dump_json(**kwargs)

    def __eq__(self, other: object) -> bool:
        """Equal values are equal Specs, wherever they were declared."""
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        if self.carried_problems:
            return f"{type(self).__name__}(<invalid: {len(self.carried_problems)} problem(s)>)"
        return super().__repr__()


def _known_fields(model: type[BaseModel]) -> dict[str, list[str]]:
    return {"": list(model.model_fields)}


class SecretRef(Spec):
    """Where a secret lives on the machine that runs servekit: a file (0600) or an env variable.

    The secret itself never appears in an inventory, a command line or a rendered file that is
    not 0600.
    """

    file: ControlPath | None = None
    env: EnvName | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise invalid(
                "a secret comes from one place",
                "give exactly one: SecretRef(file='~/.config/x') or SecretRef(env='VAR')",
            )
        return self

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"environment variable {self.env}"


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


class Serve(Spec):
    """A model served by an engine on some machines.

    `model` is a catalog name, a Hugging Face id or an Ollama tag. With `engine="vllm"` an Ollama
    tag is mapped to its Hugging Face model and kept as a served name, so clients of the Ollama
    deployment keep working after the move.
    """

    name: Name | None = Field(None, description="names units and routes; default from the model")
    model: ModelName = Field(min_length=1)
    engine: Literal["vllm", "ollama"] = "vllm"
    hosts: list[Text] | None = Field(None, description="machine or node-group names; default all")
    replicas: int | None = Field(None, ge=1, description="default: as many as the hosts hold")
    nodes_per_replica: int = Field(1, ge=1, le=16)
    gpus_per_replica: int | None = Field(None, ge=1, le=16, description="default: a whole node")
    tensor_parallel: int | None = Field(None, ge=1, le=16)
    pipeline_parallel: int | None = Field(None, ge=1, le=16)
    max_model_len: int | None = Field(None, ge=256)
    dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    quantization: Literal["auto", "none", "fp8", "awq"] = Field(
        "auto", description="auto: only when the model does not fit otherwise"
    )
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    gpu_memory_utilization: float = Field(0.92, gt=0.05, le=0.99)
    max_num_seqs: int | None = Field(None, ge=1)
    served_names: list[ModelName] = Field(
        default_factory=list, description="extra names it answers to"
    )
    port: Port | None = Field(None, description=f"default {VLLM_PORT} (vLLM), {OLLAMA_PORT}")
    revision: Revision | None = Field(None, description="Hugging Face revision (commit) to pin")
    distributed_backend: Literal["mp", "ray"] = "mp"

    @model_validator(mode="after")
    def _engine_rules(self) -> Serve:
        if self.engine == "ollama":
            for field in ("tensor_parallel", "pipeline_parallel", "gpus_per_replica"):
                if getattr(self, field) is not None:
                    raise invalid(
                        f"{field} applies to vLLM only; Ollama places layers itself",
                        f"remove {field}, or use engine='vllm'",
                    )
            if self.nodes_per_replica > 1:
                raise invalid(
                    "Ollama cannot spread one model over several machines",
                    "use engine='vllm' for multi-node, or nodes_per_replica=1",
                )
            if self.quantization in ("fp8", "awq"):
                raise invalid(
                    "Ollama serves the quantization of its tag (GGUF), not fp8/awq",
                    "pick a tag such as 'llama3.1:8b-instruct-q8_0', or use engine='vllm'",
                )
        if self.distributed_backend == "ray" and self.nodes_per_replica == 1:
            raise invalid(
                "the Ray backend only matters for a replica across several nodes",
                "set nodes_per_replica, or leave distributed_backend='mp'",
            )
        return self

    @property
    def engine_port(self) -> int:
        return self.port or (OLLAMA_PORT if self.engine == "ollama" else VLLM_PORT)


class OllamaSettings(Spec):
    """How Ollama runs on every machine that serves an Ollama model (OLLAMA_* variables)."""

    expose: bool = Field(
        False, description="listen beyond loopback: only allowed behind the fleet's gateway"
    )
    keep_alive: KeepAlive = "5m"
    num_parallel: int = Field(1, ge=1, le=64)
    max_loaded_models: int = Field(0, ge=0)
    flash_attention: bool | None = None
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    context_length: int = Field(0, ge=0, description="0: Ollama picks by VRAM")
    origins: list[Origin] = Field(default_factory=list)
    clients: list[Address] = Field(
        default_factory=list,
        description="addresses (IP or host name) admitted to an exposed Ollama, besides the "
        "gateway and monitoring hosts; names are resolved when the fleet is planned",
    )
    prune: bool = Field(False, description="delete models that are not declared")
    models_dir: HostDir | None = None

    @model_validator(mode="after")
    def _kv_needs_flash(self) -> OllamaSettings:
        if self.kv_cache_type != "f16" and self.flash_attention is False:
            raise invalid(
                f"kv_cache_type={self.kv_cache_type!r} needs flash attention",
                "remove flash_attention=False, or use kv_cache_type='f16'",
            )
        return self


class Gateway(Spec):
    """The one OpenAI-compatible endpoint clients use, with API keys, in front of the engines."""

    host: Text
    port: Port = 8080
    api_keys: SecretRef = Field(description="a file (or env variable) with one client key a line")


class Monitoring(Spec):
    """Prometheus scraping the engines, node exporters and (GPU hosts) DCGM exporters."""

    host: Text
    port: Port = 9090
    scrape_interval: PrometheusDuration = "15s"
    retention: PrometheusDuration = "15d"


class HuggingFace(Spec):
    kind: Literal["huggingface"] = "huggingface"
    endpoint: Url = "https://huggingface.co"
    token: SecretRef | None = Field(None, description="needed for gated models")


class S3Bucket(Spec):
    kind: Literal["s3"] = "s3"
    bucket: BucketName
    prefix: KeyPrefix = ""
    region: Region | None = None
    endpoint_url: Url | None = None
    credentials: SecretRef | None = Field(
        None,
        description="two lines: access key id, secret access key (default: the host's own, "
        "e.g. an instance role)",
    )


class LocalPath(Spec):
    kind: Literal["local"] = "local"
    path: HostDir = Field(description="a directory on each host, e.g. an NFS mount")


WeightsSource = Annotated[HuggingFace | S3Bucket | LocalPath, Field(discriminator="kind")]


class Sources(Spec):
    """Where everything is downloaded from: each one can point at a mirror (air-gapped sites)."""

    python_index: Url = "https://pypi.org/simple"
    torch_index: Url = "https://download.pytorch.org/whl"
    vllm_wheels: Url = "https://wheels.vllm.ai"
    nvidia_apt: Url = "https://developer.download.nvidia.com/compute/cuda/repos"
    ollama_releases: Url = "https://github.com/ollama/ollama/releases/download"
    weights: WeightsSource = Field(default_factory=HuggingFace)
    mirror_credentials: SecretRef | None = Field(
        None,
        description="a netrc file (machine HOST login USER password PASS) for mirrors that need a "
        "login; written on hosts only to 0600 files (apt auth.conf.d, a root-only netrc for "
        "uv/pip/curl), never in argv, logs or world-readable files",
    )


class Versions(Spec):
    """Pinned versions; each must be in servekit's versions catalog."""

    vllm: Text = "0.33.0"
    ollama: OllamaVersion = Field(default_factory=lambda: catalog.ollama_versions().default)
    driver_branch: int = Field(default_factory=catalog.default_driver_branch)

    @field_validator("vllm")
    @classmethod
    def _known_vllm(cls, version: str) -> str:
        try:
            catalog.vllm_release(version)
        except catalog.CatalogError as error:
            raise invalid(str(error), "pin a vLLM release listed in versions.toml") from None
        return version

    @field_validator("ollama")
    @classmethod
    def _safe_ollama(cls, version: str) -> str:
        minimum = catalog.ollama_versions().minimum
        if catalog.version_tuple(version) < catalog.version_tuple(minimum):
            raise invalid(
                f"Ollama {version} has known remote vulnerabilities",
                f"pin Ollama {minimum} or newer",
            )
        return version

    @field_validator("driver_branch")
    @classmethod
    def _known_branch(cls, branch: int) -> int:
        if branch not in catalog.driver_branches():
            known = ", ".join(str(b) for b in catalog.driver_branches())
            raise invalid(f"unknown driver branch {branch}", f"use one of {known}")
        return branch


class GpuSetup(Spec):
    """Options for `deploys/gpu.py` beyond the driver branch."""

    cuda_toolkit: str | None = Field(None, pattern=r"^1[23]\.\d$", description="e.g. '12.8'")
    dcgm: bool = False
    reboot: bool = Field(True, description="reboot when the driver changed (never @local)")
    reboot_batch: int = Field(1, ge=1, description="hosts rebooted at a time")


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
        problems = _check_fleet(self)
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


def _check_fleet(fleet: Fleet) -> list[Problem]:
    """Cross-field rules a single field cannot express."""
    problems: list[Problem] = []
    known_hosts = fleet.host_names()
    machine_names = [m.name for m in fleet.machines]

    node_names = [n for m in fleet.machines if isinstance(m, AwsNodeGroup) for n in m.node_names()]
    for name, count in Counter(machine_names + node_names).items():
        if count > 1:
            problems.append(
                Problem("machines", f"name {name!r} is used twice", "give every machine its name")
            )
    if sum(isinstance(m, LocalHost) for m in fleet.machines) > 1:
        problems.append(Problem("machines", "more than one LocalHost", "declare @local once"))

    def refers(field: str, ref: str) -> bool:
        if ref in known_hosts or ref in machine_names:
            return True
        problems.append(
            Problem(field, f"no machine named {ref!r}", f"use one of {', '.join(machine_names)}")
        )
        return False

    for index, serve in enumerate(fleet.serve):
        field = f"serve[{index}]"
        for ref in serve.hosts or []:
            refers(f"{field}.hosts", ref)
        if serve.hosts is not None and not all(
            r in known_hosts + machine_names for r in serve.hosts
        ):
            continue
        hosts = fleet.hosts_of(serve)
        if not hosts:
            problems.append(
                Problem(
                    f"{field}.hosts",
                    "no machine can run it (vLLM needs NVIDIA GPUs)",
                    "declare a machine with gpu=Gpu(...), or use engine='ollama'",
                )
            )
        if serve.engine == "vllm":
            for host in hosts:
                gpu = fleet.gpu_of(host)
                if gpu is None or gpu.info.apple:
                    problems.append(
                        Problem(
                            f"{field}.engine",
                            f"vLLM needs NVIDIA GPUs and {host!r} declares "
                            + ("Apple silicon" if gpu else "none"),
                            f"declare gpu=Gpu(...) on {host!r}, or use engine='ollama' there",
                        )
                    )
                if fleet.machine_of(host).os == "macos":
                    problems.append(
                        Problem(
                            f"{field}.engine",
                            f"vLLM does not run on macOS ({host!r})",
                            "use engine='ollama' on Macs",
                        )
                    )
        if serve.nodes_per_replica > 1 and len(hosts) < serve.nodes_per_replica:
            problems.append(
                Problem(
                    f"{field}.nodes_per_replica",
                    f"a replica needs {serve.nodes_per_replica} nodes, {len(hosts)} available",
                    "add machines or lower nodes_per_replica",
                )
            )
        problems += _check_model_source(fleet, serve, field)

    names = [fleet.serve_name(i) for i in range(len(fleet.serve))]
    for name, count in Counter(names).items():
        if count > 1:
            problems.append(
                Problem("serve", f"two served models are named {name!r}", "give each a unique name")
            )

    for field, service in (("gateway", fleet.gateway), ("monitoring", fleet.monitoring)):
        if service is not None:
            refers(f"{field}.host", service.host)

    problems += _check_security(fleet)
    return problems


def _check_model_source(fleet: Fleet, serve: Serve, field: str) -> list[Problem]:
    model = catalog.find_model(serve.model)
    if serve.engine == "ollama":
        if model is None and "/" in serve.model and not serve.model.startswith("hf.co/"):
            return [
                Problem(
                    f"{field}.model",
                    f"{serve.model!r} looks like a Hugging Face id; Ollama pulls library tags",
                    "use an Ollama tag such as 'llama3.1:8b' or 'hf.co/ORG/REPO-GGUF:Q4_K_M'",
                )
            ]
        return []
    weights = fleet.sources.weights
    if model and model.gated and isinstance(weights, HuggingFace) and weights.token is None:
        return [
            Problem(
                f"{field}.model",
                f"{model.hf_id} is gated on Hugging Face and the fleet has no token source",
                "accept the licence on huggingface.co, then set sources=Sources(weights="
                "HuggingFace(token=SecretRef(file='~/.config/hf-token'))); or serve from S3 or a "
                "local path",
            )
        ]
    return []


def _check_security(fleet: Fleet) -> list[Problem]:
    problems: list[Problem] = []
    has_vllm = any(s.engine == "vllm" for s in fleet.serve)
    if has_vllm and fleet.engine_api_key is None:
        problems.append(
            Problem(
                "engine_api_key",
                "vLLM would answer anyone who reaches its port",
                "set engine_api_key=SecretRef(file='~/.config/servekit/engine.key')",
            )
        )
    has_ollama = any(s.engine == "ollama" for s in fleet.serve)
    if has_ollama and fleet.ollama.expose and fleet.gateway is None:
        problems.append(
            Problem(
                "ollama.expose",
                "Ollama has no authentication: exposed without a gateway, anyone on the network "
                "can pull, delete and run models",
                "declare gateway=Gateway(...) in front of it, or keep expose=False (loopback)",
            )
        )
    return problems
