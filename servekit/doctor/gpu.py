"""GPU checks: the driver against the pinned engines' minimum, CUDA inside the engine units'
sandbox, GPUs as declared, persistence, the NVSwitch fabric and Fabric Manager, NVLink, ECC
and Xid errors since boot, clock event reasons.

`gpu_checks` turns facts (recorded outputs in tests) into rows; `gather` reads the facts on a
host. The GPU deploy's own verification (`servekit.nvidia.verify`) gives the driver, GPUs,
persistence, fabric and CUDA rows, so doctor and deploy say the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pyinfra.api.host import Host
from pyinfra.connectors.local import LocalConnector

from servekit import nvidia, systemd
from servekit.doctor.result import Check, HostFindings, Verdict
from servekit.facts.cuda import CudaCheck
from servekit.facts.devices import CharDevices
from servekit.facts.doctor import (
    EffectiveUid,
    GpuHealth,
    GpuHealthState,
    KernelXidLog,
    KernelXids,
    NvlinkLink,
    NvlinkStatus,
    ServiceActive,
)
from servekit.facts.nvidia import FabricState, NvidiaGpus, NvidiaPciDevices
from servekit.hostplan import HostPlan
from servekit.nvidia.gpu_target import GpuTarget, target_from_facts, target_from_plan
from servekit.nvidia.shapes import CudaCheckResult, FabricGpu, SmiGpus

GROUP = "gpu"
PLAN_OPTIONAL = True
"""These checks run without a fleet declaration too (`servekit doctor --local` alone)."""

FABRIC_MANAGER = "nvidia-fabricmanager"

# Xids that mean the GPU cannot serve until it is reset or replaced (NVIDIA's Xid catalog,
# docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html; 48 and 46 as named in
# docs.nvidia.com/health-validation/reference/checks/xid.md; 79's text as the driver logs it,
# github.com/NVIDIA/open-gpu-kernel-modules/issues/1151). Any other Xid is a warning.
FATAL_XIDS = {
    79: "GPU has fallen off the bus",
    48: "double bit ECC error",
    46: "GPU stopped processing",
}

# Clock event reasons that mean the GPU runs slower than it could for a hardware reason (the
# other reasons nvidia-smi lists, Idle, Applications Clocks Setting, SW Power Cap, Sync Boost,
# Display Clock Setting, are the normal operation of an idle or power-capped GPU).
SLOWDOWN_REASONS = (
    "HW Slowdown",
    "HW Thermal Slowdown",
    "HW Power Brake Slowdown",
    "SW Thermal Slowdown",
)

EXPECTED = {
    "driver": "nvidia-smi lists the GPUs",
    "GPUs": "the GPUs the fleet declares",
    "driver version": "at least the pinned engines' minimum",
    "persistence mode": "on for every GPU",
    "NVSwitch fabric": "Completed on every GPU",
    "CUDA": "initialises in the engine units' sandbox",
    "CUDA in the engine sandbox": "initialises in the engine units' sandbox",
    "CUDA toolkit": "the fleet's gpu_setup.cuda_toolkit",
}


@dataclass(frozen=True)
class GpuFacts:
    """What `gather` reads on a host (tests build it from recorded outputs)."""

    smi: SmiGpus
    pci_gpus: int = 0
    nvswitch: bool = False
    fabric: list[FabricGpu] = field(default_factory=list)
    cuda: CudaCheckResult | None = None
    device_allow: list[str] = field(default_factory=list)
    fabric_manager: str | None = None
    health: list[GpuHealth] | None = None
    nvlink: list[NvlinkLink] | None = None
    xids: KernelXids | None = None
    root: bool = True
    """The facts were read as root: without it the CUDA check cannot enter the sandbox."""


def _row(host: str, check: str, expected: str, found: str, ok: bool, fix: str = "") -> Check:
    return Check(host, check, expected, found, "ok" if ok else "fail", "" if ok else fix)


def no_gpu_rows(host: str, why: str) -> list[Check]:
    """A host without GPUs (or declared without): one skip row that says why."""
    return [Check(host, "GPUs", "-", why, "skip")]


def gpu_checks(host: str, target: GpuTarget, facts: GpuFacts) -> list[Check]:
    """Every GPU row of one host."""
    smi = facts.smi
    if smi["state"] == "missing" and not facts.pci_gpus and not target.gpu_count:
        return no_gpu_rows(host, "no NVIDIA GPU on the PCI bus and none declared")
    findings = nvidia.verify(
        target, smi, facts.fabric, facts.cuda, facts.nvswitch, device_allow=facts.device_allow
    )
    expected = {**EXPECTED, **_expected_of(target)}
    rows = [
        _row(host, f.check, expected.get(f.check, "-"), f.detail, f.ok, f.fix) for f in findings
    ]
    if facts.cuda is not None and not facts.root:
        rows.append(_not_root_row(host))
    rows += _bus_rows(host, facts)
    if facts.nvswitch:
        rows.append(_fabric_manager_row(host, facts.fabric_manager))
    if facts.xids is not None or smi["state"] == "ok":  # Xid 79 matters most when smi fails
        rows.append(_xid_row(host, facts.xids))
    if smi["state"] != "ok":
        return rows
    rows.append(_nvlink_row(host, facts.nvlink, facts.nvswitch))
    rows += [_ecc_row(host, facts.health), _clocks_row(host, facts.health)]
    return rows


def _expected_of(target: GpuTarget) -> dict[str, str]:
    """The declared GPUs and the driver minimum in words, where the target has them."""
    expected = {}
    if target.declared and target.gpu_model:
        expected["GPUs"] = f"{target.gpu_count} × {target.gpu_model} (the fleet's declaration)"
    if target.minimum_drivers:
        expected["driver version"] = "≥ " + ", ".join(
            f"{m.version} ({m.reason})" for m in target.minimum_drivers
        )
    return expected


def _not_root_row(host: str) -> Check:
    return Check(
        host,
        "CUDA in the engine sandbox",
        "initialises in the engine units' sandbox",
        "not checked: systemd-run starts the sandbox only as root (the CUDA row ran outside it)",
        "warn",
        "run doctor as root: `--sudo` with --local, or `sudo=True` on the fleet's machine",
    )


def _bus_rows(host: str, facts: GpuFacts) -> list[Check]:
    """GPUs on the PCI bus that the driver does not list: fallen off the bus, or not bound."""
    listed = len(facts.smi["gpus"])
    if not facts.pci_gpus or facts.pci_gpus <= listed:
        return []
    return [
        Check(
            host,
            "GPUs on the PCI bus",
            f"the driver lists all {facts.pci_gpus} NVIDIA GPUs on the PCI bus",
            f"{facts.pci_gpus} on the PCI bus, the driver lists {listed}",
            "fail",
            "`dmesg | grep -i -e NVRM -e Xid` (Xid 79: fallen off the bus); reset the GPU or "
            "reboot; if it repeats, have the GPU or its slot serviced",
        )
    ]


def _fabric_manager_row(host: str, state: str | None) -> Check:
    expected = f"{FABRIC_MANAGER} active (NVSwitch host)"
    if state == "active":
        return Check(host, "Fabric Manager", expected, "active", "ok")
    return Check(
        host,
        "Fabric Manager",
        expected,
        state or "unknown",
        "fail",
        f"`systemctl enable --now {FABRIC_MANAGER}` (its version must equal the driver's); "
        f"`journalctl -u {FABRIC_MANAGER}`; without it CUDA fails with error 802",
    )


def _nvlink_row(host: str, links: list[NvlinkLink] | None, nvswitch: bool) -> Check:
    expected = "every NVLink link up"
    if links is None:
        return Check(host, "NVLink", expected, "`nvidia-smi nvlink -s` failed", "warn")
    if not links:
        verdict: Verdict = "fail" if nvswitch else "skip"
        found = "no NVLink links reported" + ("" if nvswitch else " (GPUs without NVLink)")
        return Check(
            host, "NVLink", expected, found, verdict, "check the fabric" if nvswitch else ""
        )
    down = [f"GPU {k['gpu']} link {k['link']}" for k in links if "inactive" in k["state"].lower()]
    if not down:
        return Check(host, "NVLink", expected, f"{len(links)} links up", "ok")
    return Check(
        host,
        "NVLink",
        expected,
        f"{len(down)} of {len(links)} links inactive: {', '.join(down[:8])}",
        "fail",
        "`nvidia-smi nvlink -e` for the error counters; reset the GPUs or reboot; on NVSwitch "
        "hosts check Fabric Manager",
    )


def _health_row(
    host: str,
    check: str,
    expected: str,
    health: list[GpuHealth],
    problem: Callable[[GpuHealth], str],
    bad: tuple[Verdict, str],
) -> Check:
    """One row over every GPU's `nvidia-smi -q` health: `problem` says what is wrong with a GPU
    ("" when nothing); `bad` is the verdict and fix when a GPU has a problem."""
    problems = {g["bus_id"]: problem(g) for g in health}
    found = "; ".join(f"{bus}: {text}" for bus, text in problems.items() if text)
    if not found:
        return Check(host, check, expected, f"none on {len(health)} GPUs", "ok")
    return Check(host, check, expected, found, *bad)


def _ecc_row(host: str, health: list[GpuHealth] | None) -> Check:
    expected = "no uncorrectable ECC errors since the driver loaded"
    if health is None:
        return Check(host, "ECC errors", expected, "`nvidia-smi -q` failed", "warn")
    if all(g["ecc_uncorrectable"] is None for g in health):
        return Check(host, "ECC errors", expected, "ECC off or not reported on these GPUs", "skip")
    fix = (
        "drain the host; `nvidia-smi -q -d ECC,ROW_REMAPPER`; reset the GPU (`nvidia-smi -r`) or "
        "reboot; if errors come back, have the GPU replaced"
    )
    return _health_row(
        host,
        "ECC errors",
        expected,
        health,
        lambda g: (
            f"{g['ecc_uncorrectable']} uncorrectable (volatile)" if g["ecc_uncorrectable"] else ""
        ),
        ("fail", fix),
    )


def _clocks_row(host: str, health: list[GpuHealth] | None) -> Check:
    expected = "no hardware or thermal slowdown"
    if health is None:
        return Check(host, "GPU clocks", expected, "`nvidia-smi -q` failed", "warn")
    fix = "check cooling and power (`nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`)"
    return _health_row(
        host,
        "GPU clocks",
        expected,
        health,
        lambda g: ", ".join(r for r in g["clock_reasons"] if r in SLOWDOWN_REASONS),
        ("warn", fix),
    )


def _xid_row(host: str, xids: KernelXids | None) -> Check:
    expected = "no Xid errors since boot"
    if xids is None or xids["source"] == "none":
        return Check(host, "Xid errors", expected, "the kernel log could not be read", "warn")
    events = xids["events"]
    if not events:
        return Check(host, "Xid errors", expected, f"none ({xids['source']})", "ok")
    fatal = [e for e in events if e["xid"] in FATAL_XIDS]
    shown = fatal or events
    last = shown[-1]
    found = (
        f"{len(events)} Xid line(s) ({xids['source']}); last: Xid {last['xid']} on "
        f"{last['pci']}: {FATAL_XIDS.get(last['xid'], last['text'])}"
    )
    if fatal:
        return Check(
            host,
            "Xid errors",
            expected,
            found,
            "fail",
            "drain the host and reboot (a GPU that fell off the bus needs at least a cold "
            "reboot); if it repeats, have the GPU or its slot serviced",
        )
    return Check(
        host,
        "Xid errors",
        expected,
        found,
        "warn",
        "look the Xid up in NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors)",
    )


def read_facts(host: Host) -> GpuFacts:
    """Read the GPU facts on a host (the CUDA check only when the driver lists GPUs)."""
    smi = host.get_fact(NvidiaGpus)
    pci = host.get_fact(NvidiaPciDevices)
    nvswitch = any(d["kind"] == "nvswitch" for d in pci)
    sandbox = systemd.gpu_check_sandbox(host.get_fact(CharDevices))
    facts = GpuFacts(
        smi=smi,
        pci_gpus=sum(1 for d in pci if d["kind"] == "gpu"),
        nvswitch=nvswitch,
        device_allow=list(sandbox.devices),
    )
    if smi["state"] != "ok" and not facts.pci_gpus:
        return facts
    cuda = None
    root = host.get_fact(EffectiveUid) == 0
    if smi["state"] == "ok":
        run_args = systemd.systemd_run(sandbox) if root else None
        cuda = host.get_fact(CudaCheck, script="-", run_args=run_args, inline=True)
    return GpuFacts(
        smi=smi,
        pci_gpus=facts.pci_gpus,
        nvswitch=nvswitch,
        fabric=host.get_fact(FabricState) if nvswitch else [],
        cuda=cuda,
        device_allow=facts.device_allow,
        fabric_manager=host.get_fact(ServiceActive, unit=FABRIC_MANAGER) if nvswitch else None,
        health=host.get_fact(GpuHealthState),
        nvlink=host.get_fact(NvlinkStatus),
        xids=host.get_fact(KernelXidLog),
        root=root,
    )


def target_of(host: Host, plan: HostPlan | None, smi: SmiGpus) -> GpuTarget:
    local = issubclass(host.connector_cls, LocalConnector)
    return target_from_plan(plan, local) if plan else target_from_facts(host.name, smi, local)


def gather(host: Host, plan: HostPlan | None, findings: HostFindings) -> None:
    """The GPU rows of one host; `findings.facts["gpu"]` keeps the GPU count and model."""
    if plan is not None and "gpu" not in plan.roles and not plan.gpu_count:
        findings.checks += no_gpu_rows(host.name, "the fleet declares no GPU on this host")
        return
    facts = read_facts(host)
    target = target_of(host, plan, facts.smi)
    findings.checks += gpu_checks(host.name, target, facts)
    findings.facts[GROUP] = {
        "gpus": len(facts.smi["gpus"]),
        "model": facts.smi["gpus"][0]["name"] if facts.smi["gpus"] else None,
    }
