"""System checks: free space for the planned weights, memory for loading them, and the engine
units' open-file limit.

`disk_row`, `memory_row` and `nofile_rows` are pure (facts in, rows out); `gather` reads the
facts on a host. They need the fleet's plan: without one there is nothing to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api.host import Host

from servekit import systemd
from servekit.doctor.result import Check, HostFindings
from servekit.facts.doctor import DiskSpace, DiskUsage, MemInfo, UnitProperties
from servekit.hostplan import HfWeights, HostPlan, S3Weights, ray_unit
from servekit.vllm_layout import LAYOUT

GROUP = "system"
PLAN_OPTIONAL = False

GIB = 1 << 30
ENGINE_NOFILE = dict(systemd.ENGINE)["LimitNOFILE"]
"""The open-file limit servekit's engine units set (servekit/systemd.py ENGINE)."""


@dataclass(frozen=True)
class WeightsNeed:
    """Where a host's weights go and how many GiB its engines load."""

    directory: str | None
    """None: a local path servekit does not copy into (nothing to download)."""
    total_gib: float
    per_host_gib: float
    checkpoints: list[str]


def weights_need(plan: HostPlan) -> WeightsNeed:
    """The checkpoints this host's vLLM instances serve (each once), their planned size, and the
    share one host loads (a multi-node replica splits its weights over its nodes)."""
    sizes: dict[str, float] = {}
    share: dict[str, float] = {}
    for instance in plan.vllm:
        key = f"{instance.checkpoint}@{instance.revision or 'main'}"
        sizes[key] = instance.weights_gib
        share[key] = instance.weights_gib / max(instance.nnodes, 1)
    source = plan.sources.weights
    directory = (
        LAYOUT.hf_hub
        if isinstance(source, HfWeights)
        else LAYOUT.models_dir
        if isinstance(source, S3Weights)
        else None
    )
    return WeightsNeed(directory, sum(sizes.values()), sum(share.values()), list(sizes))


def disk_row(host: str, need: WeightsNeed, disk: DiskUsage | None) -> Check:
    """Free space plus what is already under the weights directory vs the planned weights."""
    expected = f"room for {need.total_gib:.1f} GiB of weights in {need.directory}"
    if disk is None:
        return Check(host, "disk for weights", expected, "`df` gave no answer", "warn")
    free, there = disk["free_bytes"] / GIB, disk["used_below_bytes"] / GIB
    found = f"{free:.1f} GiB free on {disk['mount']}, {there:.1f} GiB already there"
    if free + there >= need.total_gib:
        return Check(host, "disk for weights", expected, found, "ok")
    missing = need.total_gib - free - there
    return Check(
        host,
        "disk for weights",
        expected,
        found,
        "fail",
        f"free {missing:.1f} GiB more on {disk['mount']} (`df -h {disk['mount']}`; "
        f"`du -sh {need.directory}/*`), or give the host a bigger disk",
    )


def memory_row(host: str, need: WeightsNeed, meminfo: dict[str, int]) -> Check:
    """Host memory vs the weights this host loads: vLLM reads the checkpoint files through the
    page cache, so a host with less memory than its share of the weights loads them from disk
    more than once (servekit's rule of thumb: a warning, not a failure)."""
    expected = f"at least {need.per_host_gib:.1f} GiB of memory (this host's share of weights)"
    total = meminfo.get("MemTotal")
    if total is None:
        return Check(host, "memory", expected, "/proc/meminfo has no MemTotal", "warn")
    found = f"{total / GIB:.1f} GiB total, {meminfo.get('MemAvailable', 0) / GIB:.1f} available"
    if total / GIB >= need.per_host_gib:
        return Check(host, "memory", expected, found, "ok")
    return Check(
        host,
        "memory",
        expected,
        found,
        "warn",
        "loading will be slow (the weights do not fit the page cache): a host with more memory",
    )


def nofile_rows(host: str, limits: dict[str, dict[str, str]]) -> list[Check]:
    """Each engine unit's loaded LimitNOFILE vs the one servekit writes."""
    rows = []
    expected = f"LimitNOFILE={ENGINE_NOFILE}"
    for unit, properties in limits.items():
        check = f"open files {unit}"
        if not properties:
            rows.append(Check(host, check, expected, "no systemd on this host", "skip"))
        elif properties.get("LoadState") != "loaded":
            found = f"unit {properties.get('LoadState', 'unknown')} (not deployed yet)"
            rows.append(Check(host, check, expected, found, "skip"))
        elif properties.get("LimitNOFILE") == ENGINE_NOFILE:
            rows.append(Check(host, check, expected, f"LimitNOFILE={ENGINE_NOFILE}", "ok"))
        else:
            found = f"LimitNOFILE={properties.get('LimitNOFILE')}"
            fix = f"a drop-in overrides servekit's unit: `systemctl cat {unit}`; deploy again"
            rows.append(Check(host, check, expected, found, "fail", fix))
    return rows


def gather(host: Host, plan: HostPlan | None, findings: HostFindings) -> None:
    """The system rows of one host (only with a plan: the weights sizes come from it)."""
    if plan is None or not plan.vllm:
        why = "no fleet declaration" if plan is None else "no vLLM engine on this host"
        findings.checks.append(Check(host.name, "disk for weights", "-", why, "skip"))
        return
    need = weights_need(plan)
    if need.directory is None:
        found = "weights from a local path (nothing downloaded)"
        findings.checks.append(Check(host.name, "disk for weights", "-", found, "skip"))
    else:
        disk = host.get_fact(DiskSpace, path=need.directory)
        findings.checks.append(disk_row(host.name, need, disk))
    meminfo = host.get_fact(MemInfo)
    findings.checks.append(memory_row(host.name, need, meminfo))
    units = [ray_unit(i) if i.role == "ray-worker" else i.unit for i in plan.vllm]
    limits = {f"{u}.service": host.get_fact(UnitProperties, unit=f"{u}.service") for u in units}
    findings.checks += nofile_rows(host.name, limits)
    findings.facts[GROUP] = {"mem_total": meminfo.get("MemTotal")}
