"""From a declared fleet to a plan per host: which GPUs each replica takes, ports, ranks, routes,
and the firewall of each host.

`plan_fleet` is pure apart from the model resolver it is given (the default looks models up in
the catalog, then in a Hugging Face config.json) and the host-name resolver (the firewall admits
addresses). Every problem found is collected and raised as one FleetError naming the fields and
the fixes.
"""

from __future__ import annotations

import os

from servekit.errors import FleetError
from servekit.hostplan import GpuSetupPlan, HostPlan, VersionsPlan
from servekit.placement.firewall import firewall_plan
from servekit.placement.ollama import ollama_host, plan_ollama
from servekit.placement.services import exporters_plan, gateway_plan, monitoring_plan
from servekit.placement.state import ANY as ANY
from servekit.placement.state import HOST_NAME as HOST_NAME
from servekit.placement.state import LOOPBACK as LOOPBACK
from servekit.placement.state import FleetPlan as FleetPlan
from servekit.placement.state import NameResolver as NameResolver
from servekit.placement.state import NodeAddress as NodeAddress
from servekit.placement.state import PlacementState
from servekit.placement.state import Resolver as Resolver
from servekit.placement.state import ServeSummary as ServeSummary
from servekit.placement.state import default_resolver as default_resolver
from servekit.placement.state import resolve_host_name as resolve_host_name
from servekit.placement.vllm import plan_vllm
from servekit.spec import AwsNodeGroup, Fleet, LocalHost, SshHost


def plan_fleet(
    fleet: Fleet,
    addresses: dict[str, NodeAddress] | None = None,
    resolve: Resolver = default_resolver,
    resolve_name: NameResolver = resolve_host_name,
) -> FleetPlan:
    """Plan every served model and every host of the fleet; FleetError lists all problems.

    `resolve_name` turns the host names the firewalls admit into addresses (default: the control
    machine's resolver)."""
    state = PlacementState(fleet, addresses or {}, resolve, resolve_name)
    for index, serve in enumerate(fleet.serve):
        if serve.engine == "vllm":
            plan_vllm(state, index, serve)
        else:
            plan_ollama(state, index, serve)
    hosts = {name: host_plan(state, name) for name in fleet.host_names()}
    if state.problems:
        raise FleetError(state.problems, fleet=fleet.name)
    costs = [state.cost([h]) for h in hosts]
    cloud = [c for c in costs if c is not None]
    return FleetPlan(
        fleet=fleet.name,
        serves=state.summaries,
        hosts=hosts,
        cost_usd_hour=round(sum(cloud), 2) if cloud else None,
    )


def sudo(machine: SshHost | LocalHost | AwsNodeGroup) -> bool:
    """Whether system changes on this host need sudo (never for Homebrew on macOS)."""
    if machine.os == "macos":
        return False
    if isinstance(machine, LocalHost):
        return machine.sudo if machine.sudo is not None else os.geteuid() != 0
    if isinstance(machine, SshHost):
        return machine.sudo and machine.ssh_user not in (None, "root")
    return True


def host_plan(state: PlacementState, name: str) -> HostPlan:
    """Everything placed on one host (its gateway, monitoring and firewall decided here)."""
    fleet, host_state = state.fleet, state.hosts[name]
    machine = fleet.machine_of(name)
    gpu = state.gpu_of(name)
    nvidia = gpu is not None and not gpu.info.apple
    ollama = ollama_host(state, name)
    gateway = gateway_plan(state, name)
    monitoring = monitoring_plan(state, name)
    present = {
        "gpu": nvidia,
        "vllm": bool(host_state.vllm),
        "ollama": ollama is not None,
        "gateway": gateway is not None,
        "monitoring": monitoring is not None,
    }
    return HostPlan(
        fleet=fleet.name,
        name=name,
        roles=[role for role, here in present.items() if here],
        connection="local" if isinstance(machine, LocalHost) else "ssh",
        address=host_state.address,
        cluster_address=host_state.cluster_address,
        os=machine.os,
        sudo=sudo(machine),
        gpu_model=gpu.info.name if gpu else None,
        gpu_count=gpu.count if gpu else 0,
        nvswitch_expected=bool(nvidia and gpu and gpu.info.nvswitch and gpu.count == 8),
        cloud_group=machine.name if isinstance(machine, AwsNodeGroup) else None,
        price_usd_hour=state.cost([name]),
        vllm=host_state.vllm,
        ollama=ollama,
        gateway=gateway,
        monitoring=monitoring,
        exporters=exporters_plan(state, name),
        ssh_port=machine.ssh_port if isinstance(machine, SshHost) else 22,
        firewall=firewall_plan(state, name, ollama),
        versions=VersionsPlan.model_validate(
            fleet.versions.model_dump(mode="json")
            | {"driver_branch_pinned": "driver_branch" in fleet.versions.model_fields_set}
        ),
        sources=state.sources,
        gpu_setup=GpuSetupPlan.model_validate(fleet.gpu_setup.model_dump(mode="json")),
    )
