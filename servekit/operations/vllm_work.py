"""What the vLLM operations derive from a host's plan: the venv and packages it needs, its
weights, processes, units and `/health` URLs, what to read of the host in one round trip, and
the files it should hold. Pure but for `desired_files` (which reads the fleet's secrets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servekit import catalog, pyenv, secrets
from servekit.credentials import NETRC_FILE
from servekit.facts.devices import PROC_DEVICES, char_device_groups
from servekit.firewall import FIREWALL_UNIT
from servekit.hostplan import HostPlan, VllmInstance, ray_unit, uses_ray
from servekit.render import HostFacts, RenderedFile, render_host
from servekit.vllm_layout import LAYOUT
from servekit.weights import WeightsLocation, locate

APT_PACKAGES = ("python3-venv", "nftables")
"""Debian packages the vLLM deploy needs (python3-venv for uv's bootstrap, nftables)."""
WORKER_READY_S = 120
"""How long a headless worker or a Ray node gets to stay up after a (re)start."""


@dataclass(frozen=True)
class HostWork:
    """What servekit manages on one host, derived from its plan."""

    plan: HostPlan
    version: str
    venv: str
    requirements: tuple[str, ...]
    weights: tuple[WeightsLocation, ...]
    tools: tuple[str, ...]

    @property
    def servers(self) -> list[VllmInstance]:
        return [i for i in self.plan.vllm if i.role == "server"]

    @property
    def netrc(self) -> str | None:
        """The root-only netrc uv and pip read mirror logins from (NETRC), if the fleet has any."""
        return NETRC_FILE if self.plan.sources.mirror_credentials else None

    @property
    def processes(self) -> list[VllmInstance]:
        """Instances with a vLLM unit here (a Ray worker node runs Ray only)."""
        return [i for i in self.plan.vllm if i.role != "ray-worker"]

    @property
    def ray(self) -> list[VllmInstance]:
        return [i for i in self.plan.vllm if uses_ray(i)]

    @property
    def waves(self) -> int:
        return max((i.replica for i in self.plan.vllm), default=0) + 2

    def units(self) -> list[str]:
        names = [f"{i.unit}.service" for i in self.processes]
        names += [f"{ray_unit(i)}.service" for i in self.ray]
        return [*names, f"{FIREWALL_UNIT}.service"]

    def health_url(self, instance: VllmInstance) -> str:
        address = instance.bind_address
        if address in ("0.0.0.0", ""):
            address = "127.0.0.1"
        return f"http://{address}:{instance.port}/health"

    def spec(self) -> dict[str, Any]:
        """What `inspect_host.py` reports for this host (no secrets in here)."""
        files = [f.path for f in render_host(self.plan)]
        paths = [d[0] for d in LAYOUT.directories()] + files
        paths += [LAYOUT.current_link, LAYOUT.previous_link]
        paths += [w.marker for w in self.weights if w.marker]
        paths += [f"{w.directory}/config.json" for w in self.weights if w.kind == "local"]
        paths += [LAYOUT.rollback_copy(i.unit) for i in self.processes]
        return {
            "packages": list(APT_PACKAGES),
            "user": LAYOUT.user,
            "paths": sorted(set(paths)),
            "read": [
                LAYOUT.venv_marker_of(self.venv),
                LAYOUT.venv_marker_of(LAYOUT.tools_venv),
                PROC_DEVICES,
            ],
            "globs": LAYOUT.managed_globs(),
            "run": {"uv": f"{pyenv.uv_binary()} --version 2>/dev/null"},
            "units": self.units(),
            "health": {i.unit: self.health_url(i) for i in self.servers},
            "interfaces": any(i.nnodes > 1 for i in self.plan.vllm),
        }


def host_work(plan: HostPlan) -> HostWork:
    """The host's vLLM work: its pinned version's venv and requirements, distinct weights and
    the downloaders they need."""
    version = plan.versions.vllm
    requirements = [f"vllm=={version}"]
    if any(uses_ray(i) for i in plan.vllm):
        requirements.append(f"ray=={catalog.tool_version('ray')}")
    locations: dict[str, WeightsLocation] = {}
    for instance in plan.vllm:
        location = locate(plan.sources.weights, instance.checkpoint, instance.revision)
        locations.setdefault(location.description, location)
    kinds = {w.kind for w in locations.values()}
    tools = []
    if "huggingface" in kinds:
        tools.append(f"huggingface_hub=={catalog.tool_version('huggingface_hub')}")
    if "s3" in kinds:
        tools.append(f"boto3=={catalog.tool_version('boto3')}")
    return HostWork(
        plan=plan,
        version=version,
        venv=LAYOUT.venv(version),
        requirements=tuple(requirements),
        weights=tuple(locations.values()),
        tools=tuple(tools),
    )


def desired_files(work: HostWork, state: dict[str, Any]) -> dict[str, RenderedFile]:
    """Every file of the host, secrets filled in, interfaces and the GPU device groups the
    driver registers (/proc/devices) from the host's state."""
    groups = char_device_groups(state["read"].get(PROC_DEVICES))
    facts = HostFacts(
        interfaces=state.get("interfaces") or {},
        char_devices=None if groups is None else tuple(groups),
    )
    return {f.path: f for f in render_host(work.plan, secret=secrets.read_secret, facts=facts)}


def units_state(state: dict[str, Any], unit: str) -> dict[str, str]:
    """systemd's properties of `unit` (without `.service`) in the host's state."""
    units: dict[str, dict[str, str]] = state.get("units") or {}
    return units.get(f"{unit}.service", {})


def is_active(unit_state: dict[str, str]) -> bool:
    return unit_state.get("ActiveState") in ("active", "reloading")
