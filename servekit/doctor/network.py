"""Network checks for multi-node vLLM replicas: the nodes reach the head's cluster ports, NCCL's
interface holds the cluster address, MTU and clocks agree across a replica's nodes, an all-reduce
across the nodes reports its bus bandwidth, and on EFA instances NCCL would use EFA.

`gather` reads the facts of one host (servekit.facts.doctor_network) and keeps in
`findings.facts["network"]` what `across` compares; every verdict is a pure function of facts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from pyinfra.api.host import Host

from servekit import catalog
from servekit.doctor.result import Check, HostFindings, Verdict
from servekit.facts import doctor_network as facts
from servekit.facts.doctor_network import EfaFacts, Interface, TorchFacts
from servekit.host_scripts import script
from servekit.hostplan import HostPlan, VllmInstance, ray_unit, uses_ray
from servekit.spec import RAY_FIXED_PORTS, RAY_PORT, RAY_WORKER_PORTS
from servekit.vllm_files import EFA_ENV
from servekit.vllm_layout import LAYOUT

GROUP = "network"
CLOCK_SKEW_LIMIT_S = 1.0
"""servekit's bound, not a vendor's: NTP keeps hosts within milliseconds, so more than a second
between a replica's nodes means a node's time sync is broken (logs of the nodes no longer line
up, and certificates and tokens that carry times are judged differently on each node)."""
ALLREDUCE = {"megabytes": 256, "iterations": 5, "timeout_s": 60}
VENV_PYTHON = f"{LAYOUT.current_link}/bin/python"


def multinode(plan: HostPlan) -> list[VllmInstance]:
    """This host's processes that belong to replicas spanning several nodes."""
    return [i for i in plan.vllm if i.nnodes > 1]


def replica_key(instance: VllmInstance) -> str:
    return f"{instance.serve} replica {instance.replica}"


def cluster_targets(instance: VllmInstance) -> list[tuple[str, int]]:
    """The head's ports a worker node opens: vLLM's master port (mp), or Ray's GCS and the
    head's node and object manager ports (Ray). The head itself opens none."""
    if instance.node_rank == 0 or not instance.head_address:
        return []
    if uses_ray(instance):
        ray = [RAY_FIXED_PORTS["node-manager-port"], RAY_FIXED_PORTS["object-manager-port"]]
        return [(instance.head_address, p) for p in (RAY_PORT, *ray)]
    return [(instance.head_address, instance.master_port)] if instance.master_port else []


def port_checks(
    host: str, instance: VllmInstance, reach: Mapping[str, str], engines_running: bool
) -> list[Check]:
    """One row per head port. `refused` is fine before a deploy (nothing listens yet); once
    this node's engine runs, the head's must listen. A timeout is a firewall on the way."""
    rows = []
    for address, port in cluster_targets(instance):
        found = reach.get(f"{address}:{port}", "not checked")
        target = f"{instance.head} {address}:{port}"
        verdict: Verdict = "ok"
        fix = ""
        if found == "timeout":
            verdict = "fail"
            fix = (
                f"packets to {target} are dropped: admit TCP {port} from this node in the "
                "security group or firewall between the nodes"
            )
        elif found == "refused" and engines_running:
            verdict = "fail"
            fix = (
                f"nothing listens on {target}: check `systemctl status {instance.unit}` and "
                f"`journalctl -u {instance.unit} -b` on {instance.head}"
            )
        elif found not in ("open", "refused"):
            verdict = "fail"
            fix = f"{target} is unreachable ({found}): check routes and cluster_address"
        expected = "open" if engines_running else "open, or refused before a deploy"
        rows.append(Check(host, f"reach {target}", expected, found, verdict, fix))
    return rows


def nccl_selects(spec: str, name: str) -> bool:
    """Whether NCCL_SOCKET_IFNAME=`spec` lets NCCL use interface `name`: prefixes separated by
    `,`; `^` excludes; `=` matches whole names (docs.nvidia.com/deeplearning/nccl/user-guide/
    docs/env.html#nccl-socket-ifname)."""
    exclude = spec.startswith("^")
    spec = spec.removeprefix("^")
    exact = spec.startswith("=")
    spec = spec.removeprefix("=")
    prefixes = [p for p in spec.split(",") if p]
    hit = any(name == p if exact else name.startswith(p) for p in prefixes)
    return hit != exclude


def holder(interfaces: list[Interface], address: str) -> Interface | None:
    return next((i for i in interfaces if address in i["addresses"]), None)


def nccl_interface_check(
    host: str, address: str, env: Mapping[str, str], interfaces: list[Interface]
) -> Check:
    """The interface NCCL would use holds the cluster address: NCCL_SOCKET_IFNAME when the unit
    sets it; else NCCL picks by itself (ib* first, lo and docker* last: same page), so the
    address must sit on an interface and the variable should name it."""
    name = "NCCL interface"
    owner = holder(interfaces, address)
    if owner is None:
        held = ", ".join(f"{i['name']} {' '.join(i['addresses'])}" for i in interfaces if i["up"])
        fix = "set cluster_address to an address of this host, reachable from the other nodes"
        return Check(host, name, f"an interface holds {address}", held or "none", "fail", fix)
    spec = env.get("NCCL_SOCKET_IFNAME")
    if spec is None:
        found = f"{owner['name']} holds {address}; NCCL_SOCKET_IFNAME unset (NCCL chooses)"
        fix = (
            f"run deploys/vllm.py: it writes NCCL_SOCKET_IFNAME={owner['name']} and "
            f"GLOO_SOCKET_IFNAME={owner['name']} into the unit"
        )
        return Check(host, name, f"NCCL uses {owner['name']}", found, "warn", fix)
    chosen = [i["name"] for i in interfaces if i["up"] and nccl_selects(spec, i["name"])]
    found = f"NCCL_SOCKET_IFNAME={spec} selects {', '.join(chosen) or 'no interface'}"
    if chosen == [owner["name"]]:
        return Check(host, name, f"NCCL uses {owner['name']}", found, "ok")
    verdict: Verdict = "warn" if owner["name"] in chosen else "fail"
    fix = (
        f"{address} is on {owner['name']}: run deploys/vllm.py to write "
        f"NCCL_SOCKET_IFNAME={owner['name']} into the unit (the interfaces changed since)"
    )
    return Check(host, name, f"NCCL uses {owner['name']}", found, verdict, fix)


def ntp_check(host: str, synchronized: bool | None) -> Check:
    found = {True: "yes", False: "no", None: "unknown (no timedatectl)"}[synchronized]
    if synchronized:
        return Check(host, "clock synchronized (NTP)", "yes", found, "ok")
    fix = "enable time sync: `timedatectl set-ntp true` (or chrony)"
    return Check(host, "clock synchronized (NTP)", "yes", found, "warn", fix)


def clock_offset(epoch: float | None, sent: float, received: float) -> dict[str, float] | None:
    """The host's clock minus the control machine's at the midpoint of the round trip, and
    how far off that estimate can be (half the round trip)."""
    if epoch is None:
        return None
    return {"offset_s": epoch - (sent + received) / 2, "uncertainty_s": (received - sent) / 2}


EFA_PLUGIN_FIX = (
    "install the aws-ofi-nccl plugin (the DLAMI ships it under /opt/amazon/ofi-nccl) and put "
    "its lib directory on the engine units' LD_LIBRARY_PATH"
)


def efa_check(host: str, efa: EfaFacts, env: Mapping[str, str]) -> Check | None:
    """On an instance type with EFA (catalog's max_efa) or a host with EFA devices, whether NCCL
    would use EFA: the devices, the aws-ofi-nccl plugin the engines can load, FI_PROVIDER=efa.
    None elsewhere."""
    kind = efa["instance_type"]
    known = catalog.instance_types().get(kind or "")
    devices = sorted(d for d, driver in efa["devices"].items() if driver == "efa")
    if (known is None or known.max_efa == 0) and not devices:
        return None
    name = "NCCL transport"
    expected = f"EFA ({kind}: up to {known.max_efa} EFA interfaces)" if known else "EFA"
    if not devices:
        fix = "launch with EFA interfaces (`servekit cloud apply` creates the EFA layout)"
        return Check(host, name, expected, "sockets: no EFA device", "fail", fix)
    library_path = env.get("LD_LIBRARY_PATH", "").split(":")
    loadable = efa["ld_cache"] + [p for p in efa["plugins"] if p.rpartition("/")[0] in library_path]
    if not loadable:
        present = ", ".join(efa["plugins"]) or "no aws-ofi-nccl plugin"
        return Check(host, name, expected, f"sockets: {present}", "fail", EFA_PLUGIN_FIX)
    found = f"EFA on {len(devices)} devices via {loadable[0]}"
    if env.get("FI_PROVIDER") != "efa":
        return Check(host, name, expected, found, "warn", "set FI_PROVIDER=efa in the units")
    return Check(host, name, expected, found, "ok")


def allreduce_check(host: str, key: str, torch: TorchFacts, result: dict[str, Any]) -> Check:
    """The all-reduce across a replica's nodes, as this node saw it."""
    name = f"all-reduce {key}"
    if torch["version"] is None:
        found = f"skipped: the vLLM venv has no torch ({torch['error'] or 'not importable'})"
        return Check(host, name, "bus bandwidth", found, "skip")
    if not result.get("ok"):
        fix = (
            "the nodes did not meet: see the rows above (ports, interface, firewall); doctor "
            "must check every node of the replica in one run (no --host for just one)"
        )
        return Check(host, name, "bus bandwidth", str(result.get("error")), "fail", fix)
    found = (
        f"{result['busbw_gbps']:.2f} GB/s bus bandwidth ({result['backend']}, "
        f"{result['world']} nodes, {result['megabytes']} MiB)"
    )
    return Check(host, name, "bus bandwidth", found, "ok")


def allreduce_spec(
    instance: VllmInstance, backend: str, unit_env: Mapping[str, str]
) -> dict[str, Any]:
    """The rank's input: the head's master port (mp), or the top of Ray's worker range (Ray),
    both admitted between the replica's nodes and free while the engines are stopped; the
    unit's NCCL, Gloo and libfabric variables, so the test takes the engines' path."""
    env = {k: v for k, v in unit_env.items() if k.startswith(("NCCL_", "GLOO_", "FI_"))}
    env |= {k: v for k, v in unit_env.items() if k == "LD_LIBRARY_PATH"}
    return {
        "rank": instance.node_rank,
        "world": instance.nnodes,
        "master": instance.head_address,
        "port": RAY_WORKER_PORTS[1] if uses_ray(instance) else instance.master_port,
        "backend": backend,
        "device": 0,
        "env": env,
        **ALLREDUCE,
    }


def allreduce_row(
    host: Host, plan: HostPlan, instance: VllmInstance, running: bool, env: Mapping[str, str]
) -> Check | None:
    """Start this node's rank: every node but the last in the background, the last in the
    foreground, so that when doctor gathers the nodes in order they meet; the last reports."""
    key = replica_key(instance)
    torch = host.get_fact(facts.VenvTorch, python=VENV_PYTHON)
    if torch["version"] is not None and running:
        why = "the engines run and hold the cluster port: run doctor with the units stopped"
        torch = {**torch, "version": None, "error": why}
    if torch["version"] is None:
        return allreduce_check(plan.name, key, torch, {})
    last = instance.node_rank == instance.nnodes - 1
    result = host.get_fact(
        facts.AllReduceRun,
        python=VENV_PYTHON,
        program=script("doctor_allreduce"),
        spec=json.dumps(allreduce_spec(instance, "nccl" if torch["cuda"] else "gloo", env)),
        background=not last,
    )
    return allreduce_check(plan.name, key, torch, result) if last else None


def _engines_running(host: Host, plan: HostPlan) -> bool:
    """Whether a unit of a multi-node replica runs here (vLLM, or the Ray node beside it)."""
    units = [i.unit for i in multinode(plan)]
    units += [ray_unit(i) for i in multinode(plan) if uses_ray(i)]
    return any(host.get_fact(facts.UnitActive, unit=f"{unit}.service") for unit in units)


def deploy_env(instance: VllmInstance, owner: Interface | None, efa: EfaFacts) -> dict[str, str]:
    """The environment the deploy gives a multi-node unit (servekit.vllm_files._cluster_env):
    NCCL and Gloo on the interface holding the cluster address; the EFA plugin's library path
    and provider where the host has EFA devices."""
    env = dict(instance.env)
    if owner is not None:
        env |= {"NCCL_SOCKET_IFNAME": owner["name"], "GLOO_SOCKET_IFNAME": owner["name"]}
    if "efa" in efa["devices"].values():
        env |= EFA_ENV
    return env


def _node_checks(
    host: Host, plan: HostPlan, instance: VllmInstance, running: bool, efa: EfaFacts
) -> tuple[list[Check], dict[str, Any]]:
    """One replica's rows on this node, and what `across` compares (interface, MTU). The unit's
    own environment when it is installed, else the one the deploy will write."""
    interfaces = host.get_fact(facts.Interfaces)
    reach = host.get_fact(facts.PortReach, targets=cluster_targets(instance))
    address = plan.cluster_address or ""
    owner = holder(interfaces, address)
    installed = host.get_fact(facts.UnitEnvironment, unit=f"{instance.unit}.service")
    env = installed if installed is not None else deploy_env(instance, owner, efa)
    rows = port_checks(plan.name, instance, reach, running)
    nccl = nccl_interface_check(plan.name, address, env, interfaces)
    if installed is None:
        nccl = replace(nccl, found=f"{nccl.found} (as the deploy will write it)")
    rows.append(nccl)
    if (efa_row := efa_check(plan.name, efa, env)) is not None:
        rows.append(efa_row)
    if (reduce_row := allreduce_row(host, plan, instance, running, env)) is not None:
        rows.append(reduce_row)
    node = {
        "rank": instance.node_rank,
        "interface": owner["name"] if owner else None,
        "mtu": owner["mtu"] if owner else None,
    }
    return rows, node


def gather(host: Host, plan: HostPlan, findings: HostFindings) -> None:
    """This host's network rows and the facts `across` compares (MTU, clock offset)."""
    instances = multinode(plan)
    if not instances:
        return
    sent = time.time()
    clock = host.get_fact(facts.ClockReading)
    received = time.time()
    findings.checks.append(ntp_check(plan.name, clock["ntp_synchronized"]))
    running = _engines_running(host, plan)
    efa = host.get_fact(facts.EfaState, ask_imds=plan.cloud_group is not None)
    kept: dict[str, Any] = {"offset": clock_offset(clock["epoch"], sent, received), "nodes": {}}
    for instance in instances:
        rows, node = _node_checks(host, plan, instance, running, efa)
        findings.checks += rows
        kept["nodes"][replica_key(instance)] = node
    findings.facts[GROUP] = kept


def _nodes(findings: Mapping[str, HostFindings]) -> dict[str, dict[str, dict[str, Any]]]:
    """replica -> host -> {rank, interface, mtu, offset}."""
    replicas: dict[str, dict[str, dict[str, Any]]] = {}
    for host, found in findings.items():
        kept = found.facts.get(GROUP) or {}
        for key, node in kept.get("nodes", {}).items():
            replicas.setdefault(key, {})[host] = {**node, "offset": kept.get("offset")}
    return replicas


Judged = tuple[str, str, str] | None
"""(expected, found, fix) of a node against its replica's head; fix "" when it is fine; None
when there is nothing to compare."""


def _against_head(
    name: str,
    key: str,
    nodes: Mapping[str, Mapping[str, Any]],
    judge: Callable[[Mapping[str, Any], Mapping[str, Any], str], Judged],
) -> list[Check]:
    """One row per node of a replica but its head (rank 0), judged against the head."""
    head = min(nodes, key=lambda h: nodes[h]["rank"])
    rows = []
    for host, node in sorted(nodes.items()):
        judged = None if host == head else judge(node, nodes[head], head)
        if judged is not None:
            expected, found, fix = judged
            verdict: Verdict = "fail" if fix else "ok"
            rows.append(Check(host, f"{name} {key}", expected, found, verdict, fix))
    return rows


def _mtu(node: Mapping[str, Any], head: Mapping[str, Any], head_name: str) -> Judged:
    """The head's MTU on this node's cluster interface."""
    if node["mtu"] is None or head["mtu"] is None:
        return None
    found = f"{node['mtu']} on {node['interface']}"
    expected = f"{head['mtu']} (as {head_name} {head['interface']})"
    fix = (
        f"set one MTU on every node of the replica: `ip link set dev {node['interface']} "
        f"mtu {head['mtu']}` here (and in the netplan/network config), or lower {head_name}'s"
    )
    return expected, found, "" if node["mtu"] == head["mtu"] else fix


def _clock(node: Mapping[str, Any], head: Mapping[str, Any], head_name: str) -> Judged:
    """This node's clock against the head's, beyond what the round trips leave uncertain."""
    if node["offset"] is None or head["offset"] is None:
        return None
    skew = node["offset"]["offset_s"] - head["offset"]["offset_s"]
    margin = node["offset"]["uncertainty_s"] + head["offset"]["uncertainty_s"]
    found = f"{skew:+.3f} s (±{margin:.3f} s)"
    expected = f"within {CLOCK_SKEW_LIMIT_S:g} s of {head_name}"
    fix = "enable NTP on both nodes (`timedatectl set-ntp true`, or chrony) and re-check"
    return expected, found, "" if abs(skew) - margin <= CLOCK_SKEW_LIMIT_S else fix


def across(plans: Mapping[str, HostPlan], findings: Mapping[str, HostFindings]) -> list[Check]:
    """MTU and clock of each multi-node replica's nodes, compared with its head."""
    rows: list[Check] = []
    for key, nodes in sorted(_nodes(findings).items()):
        rows += _against_head("MTU", key, nodes, _mtu) + _against_head("clock", key, nodes, _clock)
    return rows
