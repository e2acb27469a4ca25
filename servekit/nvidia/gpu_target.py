"""What the GPU deploy aims for on one host (GpuTarget): from the fleet's plan, or from the
host's facts when it carries no servekit data."""

from __future__ import annotations

from dataclasses import dataclass, field

from servekit import catalog
from servekit.hostplan import HostPlan
from servekit.nvidia.apt_source import DEFAULT_MIRROR
from servekit.nvidia.shapes import SmiGpus
from servekit.spec import Versions


@dataclass(frozen=True)
class MinimumDriver:
    version: str
    reason: str


@dataclass(frozen=True)
class GpuTarget:
    """What the GPU deploy aims for on one host: from the fleet, or derived from facts."""

    host: str
    declared: bool
    gpu_model: str | None
    gpu_count: int
    branch: int
    branch_pinned: bool = False
    nvidia: bool = True
    nvswitch_expected: bool = False
    mirror: str = DEFAULT_MIRROR
    cuda_toolkit: str | None = None
    dcgm: bool = False
    reboot: bool = True
    reboot_batch: int = 1
    local: bool = False
    minimum_drivers: tuple[MinimumDriver, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        if self.gpu_model is None:
            return None
        return catalog.gpu(self.gpu_model).compute_capability_tuple or None


def minimum_drivers(vllm_version: str, vllm: bool, ollama: bool) -> tuple[MinimumDriver, ...]:
    """The driver releases the host's engines need (catalog: vLLM's default build, Ollama)."""
    needed = []
    if vllm:
        version = vllm_version
        build = catalog.vllm_release(version).builds[0]
        needed.append(MinimumDriver(build.min_driver, f"vLLM {version} (CUDA {build.cuda} build)"))
    if ollama:
        needed.append(MinimumDriver(catalog.ollama_versions().min_driver, "Ollama"))
    return tuple(needed)


def target_from_plan(plan: HostPlan, local: bool) -> GpuTarget:
    setup = plan.gpu_setup
    return GpuTarget(
        host=plan.name,
        declared=True,
        gpu_model=plan.gpu_model,
        gpu_count=plan.gpu_count,
        nvidia="gpu" in plan.roles,
        nvswitch_expected=plan.nvswitch_expected,
        branch=plan.versions.driver_branch,
        branch_pinned=plan.versions.driver_branch_pinned,
        mirror=plan.sources.nvidia_apt,
        cuda_toolkit=setup.cuda_toolkit,
        dcgm=setup.dcgm,
        reboot=setup.reboot,
        reboot_batch=setup.reboot_batch,
        local=local or plan.connection == "local",
        minimum_drivers=minimum_drivers(
            plan.versions.vllm,
            vllm=bool(plan.vllm) or plan.ollama is None,
            ollama=plan.ollama is not None,
        ),
    )


def target_from_facts(host: str, smi: SmiGpus, local: bool) -> GpuTarget:
    """No servekit data for this host: defaults from the catalog, GPUs as the host reports them."""
    model, count, notes = None, 0, ["no servekit host data: using catalog defaults"]
    if smi["state"] == "ok":
        count = len(smi["gpus"])
        try:
            model = catalog.gpu(smi["gpus"][0]["name"]).name
        except catalog.CatalogError:
            notes.append(f"GPU {smi['gpus'][0]['name']!r} is not in servekit's catalog")
        notes.append(f"GPUs from nvidia-smi: {count} × {smi['gpus'][0]['name']}")
    else:
        notes.append("GPUs unknown until the driver runs: model and count are not checked")
    vllm_version = Versions().vllm  # the fleet schema's default
    return GpuTarget(
        host=host,
        declared=False,
        gpu_model=model,
        gpu_count=count,
        branch=catalog.default_driver_branch(),
        local=local,
        minimum_drivers=minimum_drivers(vllm_version, vllm=True, ollama=False),
        notes=tuple(notes),
    )
