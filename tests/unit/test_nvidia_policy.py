"""The NVIDIA driver policy (servekit/nvidia/): names, versions, foreign packages, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from servekit import nvidia
from servekit.facts.nvidia import FabricState, NvidiaGpus
from servekit.facts.probe import STATUS_PREFIX
from servekit.inventory import load_fleet_and_plan
from servekit.nvidia import DriverChoice, Finding, GpuTarget, PolicyError
from servekit.nvidia.shapes import InstalledPackage

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/gpu-hosts"


def pkg(version: str, held: bool = False, installed: bool = True) -> InstalledPackage:
    status = ("h" if held else "i") + ("i" if installed else "U")
    return {"version": version, "status": status, "installed": installed, "held": held}


def test_repositories() -> None:
    assert nvidia.repository("ubuntu", "24.04", "x86_64") == ("ubuntu2404", "x86_64")
    assert nvidia.repository("ubuntu", "22.04", "aarch64") == ("ubuntu2204", "sbsa")
    assert nvidia.repository("debian", "12", "x86_64") == ("debian12", "x86_64")
    with pytest.raises(PolicyError, match=r"ubuntu 20\.04 is not supported"):
        nvidia.repository("ubuntu", "20.04", "x86_64")
    url = nvidia.repository_url("http://mirror/cuda/repos/", "debian12", "x86_64")
    assert url == "http://mirror/cuda/repos/debian12/x86_64/"


@pytest.mark.parametrize(
    ("directory", "branch", "flavour", "packages", "fm"),
    [
        ("ubuntu2404", 580, "open", ["nvidia-open-580"], "nvidia-fabricmanager"),
        ("ubuntu2204", 580, "proprietary", ["cuda-drivers-580"], "nvidia-fabricmanager"),
        ("ubuntu2204", 570, "open", ["nvidia-open-570"], "nvidia-fabricmanager-570"),
        ("ubuntu2404", 595, "open", ["nvidia-driver-pinning-595", "nvidia-open"], None),
        ("debian12", 580, "open", ["nvidia-driver-pinning-580", "nvidia-open"], None),
        ("debian12", 580, "proprietary", ["nvidia-driver-pinning-580", "cuda-drivers"], None),
    ],
)
def test_driver_packages(
    directory: str, branch: int, flavour: nvidia.Flavour, packages: list[str], fm: str | None
) -> None:
    choice = DriverChoice(branch, flavour, directory)
    assert choice.packages == packages
    assert choice.fabricmanager == (fm or "nvidia-fabricmanager")
    assert choice.nscq == choice.fabricmanager.replace("nvidia-fabricmanager", "libnvidia-nscq")


def test_open_modules_from_turing() -> None:
    assert nvidia.flavour_for((8, 0)) == "open"  # A100
    assert nvidia.flavour_for((7, 5)) == "open"  # T4
    assert nvidia.flavour_for((7, 0)) == "proprietary"  # V100
    assert nvidia.flavour_for(None) == "open"


def test_versions() -> None:
    assert nvidia.upstream("580.95.05-0ubuntu1") == "580.95.05"
    assert nvidia.upstream("1:580.95.05-1") == "580.95.05"
    assert nvidia.branch_of("535.104.05-0ubuntu0.22.04.1") == 535
    assert nvidia.branch_of("1.17.8-1") is None
    assert nvidia.package_branch("nvidia-headless-535-server", "535.104.05-0ubuntu1") == 535
    assert nvidia.package_branch("nvidia-fabricmanager", "570.172.08-1") == 570
    assert (
        nvidia.package_branch("linux-modules-nvidia-580-open-6.8.0-45-generic", "6.8.0-45") == 580
    )
    assert nvidia.package_branch("libnvidia-container1", "1.17.8-1") is None
    assert nvidia.package_branch("cuda-toolkit-12-8", "12.8.1-1") is None
    assert nvidia.package_branch("cuda-compat-13-0", "580.95.05-0ubuntu1") is None


def test_fabric_manager_version_matches_the_driver_exactly() -> None:
    offered = ["580.105.08-1", "580.95.05-1", "580.82.07-1"]
    assert nvidia.matching_version(offered, "580.95.05") == "580.95.05-1"
    assert nvidia.matching_version(offered, "580.65.06") is None


def test_foreign_packages() -> None:
    choice = DriverChoice(580, "open", "ubuntu2204")
    installed = {
        "nvidia-driver-535-server": pkg("535.104.05-0ubuntu1", held=True),
        "linux-modules-nvidia-535-server-generic": pkg("5.15.0-91.101"),
        "nvidia-fabricmanager-535": pkg("535.104.05-1"),
        "cuda-drivers-580": pkg("580.95.05-1"),
        "nvidia-open-580": pkg("580.95.05-1"),
        "libnvidia-compute-580": pkg("580.95.05-0ubuntu1"),
        "nvidia-fabricmanager": pkg("580.82.07-1"),
        "libnvidia-container1": pkg("1.17.8-1"),
    }
    assert nvidia.foreign_packages(installed, choice) == [
        "cuda-drivers-580",
        "linux-modules-nvidia-535-server-generic",
        "nvidia-driver-535-server",
        "nvidia-fabricmanager-535",
    ]
    assert nvidia.branch_packages(installed, 580) == [
        "cuda-drivers-580",
        "libnvidia-compute-580",
        "nvidia-fabricmanager",
        "nvidia-open-580",
    ]
    assert nvidia.installed_driver_version(installed, choice) == "580.95.05"


def test_toolkit_and_dcgm() -> None:
    assert nvidia.toolkit_package("12.8") == "cuda-toolkit-12-8"
    assert nvidia.toolkit_problem("12.8", 580, "ubuntu2404") is None
    assert "ubuntu2404 repository starts at CUDA 12.5" in str(
        nvidia.toolkit_problem("12.4", 580, "ubuntu2404")
    )
    assert "newer driver than branch 570" in str(nvidia.toolkit_problem("13.0", 570, "ubuntu2204"))
    assert nvidia.dcgm_packages(580, (8, 0)) == [
        "datacenter-gpu-manager-4-core",
        "datacenter-gpu-manager-4-cuda13",
        "datacenter-gpu-manager-4-proprietary",
        "datacenter-gpu-manager-exporter",
    ]
    assert "datacenter-gpu-manager-4-proprietary" not in nvidia.dcgm_packages(580, (9, 0))


@pytest.mark.parametrize(
    ("cuda", "branch"),
    [("13.1", 580), ("13.3", 580), ("13.0", 595), ("12.9", 535), ("12.9", 570), ("12.8", 580)],
)
def test_toolkit_runs_by_minor_version_compatibility(cuda: str, branch: int) -> None:
    """NVIDIA's Minor Version Compatibility table: CUDA 13.x needs >= 580, 12.x >= 525, and newer
    drivers run older majors (docs.nvidia.com/deploy/cuda-compatibility/
    minor-version-compatibility.html). 13.1 on 580 was refused before (580 reports CUDA 13.0)."""
    assert nvidia.toolkit_problem(cuda, branch, "ubuntu2204") is None


@pytest.mark.parametrize(("cuda", "branch"), [("13.0", 570), ("13.1", 575), ("13.0", 535)])
def test_toolkit_of_a_newer_cuda_major_is_refused(cuda: str, branch: int) -> None:
    problem = str(nvidia.toolkit_problem(cuda, branch, "ubuntu2204"))
    assert f"CUDA {cuda} needs a newer driver than branch {branch}" in problem
    assert "CUDA 13.x needs branch 580 or newer" in problem


DLAMI_595 = {  # NVIDIA's unversioned packages of branch 595 (a current Deep Learning Base AMI)
    "nvidia-driver-pinning-595": pkg("595.91.07-1"),
    "nvidia-open": pkg("595.91.07-1"),
    "libnvidia-compute": pkg("595.91.07-1"),
}


def test_the_hosts_own_driver_branch() -> None:
    assert nvidia.host_driver_branch(DLAMI_595, "595.91.07") == 595
    assert nvidia.host_driver_branch({}, "595.91.07") == 595  # a runfile: no package at all
    assert nvidia.host_driver_branch({}, None) is None
    mixed = {**DLAMI_595, "nvidia-open-580": pkg("580.95.05-1")}
    assert nvidia.host_driver_branch(mixed, "595.91.07") is None
    canonical = {"nvidia-driver-595-server": pkg("595.91.07-0ubuntu1")}
    assert nvidia.host_driver_branch(canonical, "595.91.07") is None  # replaced, as before


@pytest.mark.parametrize(
    ("found", "pinned", "month", "adopted"),
    [
        (595, False, "2026-12", 595),  # PB until March 2027 (NVIDIA's table)
        (620, False, "2026-12", 620),  # LTSB until September 2029
        (595, True, "2026-12", None),  # the fleet chose 580
        (595, False, "2027-04", None),  # past its end of life
        (575, False, "2025-06", None),  # a New Feature Branch
        (570, False, "2026-01", None),  # older than the default
        (610, False, "2026-12", None),  # not in servekit's catalog
        (None, False, "2026-12", None),
    ],
)
def test_a_newer_supported_branch_is_adopted_unless_pinned(
    found: int | None, pinned: bool, month: str, adopted: int | None
) -> None:
    branch = nvidia.adoptable_branch(580, pinned, found, month)
    assert (branch.branch if branch else None) == adopted


def test_the_plan_says_whether_the_fleet_pinned_the_driver_branch() -> None:
    from servekit.placement import plan_fleet
    from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost, Versions

    def fleet(**versions: int) -> Fleet:
        return Fleet(
            name="pin",
            machines=[SshHost(name="g", address="10.0.0.5", gpu=Gpu(model="A100-80GB", count=1))],
            serve=[Serve(model="llama-3.1-8b-instruct")],
            engine_api_key=SecretRef(env="K"),
            sources=Sources(weights=HuggingFace(token=SecretRef(env="HF"))),
            versions=Versions(**versions),
        )

    default = plan_fleet(fleet()).hosts["g"]
    pinned = plan_fleet(fleet(driver_branch=580)).hosts["g"]
    assert default.versions.driver_branch == pinned.versions.driver_branch == 580
    assert (default.versions.driver_branch_pinned, pinned.versions.driver_branch_pinned) == (
        False,
        True,
    )
    assert nvidia.target_from_plan(pinned, local=False).branch_pinned is True


def test_targets_from_the_example_fleet_and_from_facts() -> None:
    _fleet, plan = load_fleet_and_plan(ROOT / "inventories/node_8xa100.py")
    target = nvidia.target_from_plan(plan.hosts["hgx1"], local=False)
    assert (target.gpu_model, target.gpu_count, target.branch) == ("A100-SXM4-80GB", 8, 580)
    assert target.compute_capability == (8, 0) and target.declared and target.nvidia
    assert [m.version for m in target.minimum_drivers] == ["580.65.06"]
    smi = NvidiaGpus().process(
        [
            *(DATA / "h200-ubuntu2404/nvidia-smi-query-nounits.txt").read_text().splitlines()[1:-1],
            f"{STATUS_PREFIX}0",
        ]
    )
    derived = nvidia.target_from_facts("@local", smi, local=True)
    assert (derived.gpu_model, derived.gpu_count, derived.declared) == ("H200", 1, False)
    assert any("no servekit host data" in note for note in derived.notes)


def smi_of(path: Path) -> list[str]:
    return [*path.read_text().splitlines()[1:-1], f"{STATUS_PREFIX}0"]


def hgx_target(**changes: object) -> GpuTarget:
    values: dict[str, object] = dict(
        host="hgx1",
        declared=True,
        gpu_model="A100-SXM4-80GB",
        gpu_count=8,
        branch=580,
        minimum_drivers=(nvidia.MinimumDriver("580.65.06", "vLLM 0.33.0 (CUDA 13.0 build)"),),
    )
    values.update(changes)
    return GpuTarget(**values)  # type: ignore[arg-type]


def failed(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings if not f.ok}


OK_CUDA = {"ok": True, "devices": 8, "driver_cuda_version": "13.0", "error": None}


def test_verify_a_ready_hgx() -> None:
    a100 = DATA / "a100-8x-constructed"
    smi = NvidiaGpus().process(smi_of(a100 / "nvidia-smi-query-nounits.txt"))
    fabric = FabricState().process(smi_of(a100 / "nvidia-smi-q.txt"))
    findings = nvidia.verify(hgx_target(), smi, fabric, OK_CUDA, nvswitch=True)  # type: ignore[arg-type]
    assert all(f.ok for f in findings), findings
    assert [f.check for f in findings] == [
        "GPUs",
        "driver version",
        "persistence mode",
        "NVSwitch fabric",
        "CUDA",
    ]


def test_verify_explains_each_failure() -> None:
    a100 = DATA / "a100-8x-constructed"
    smi = NvidiaGpus().process(smi_of(a100 / "nvidia-smi-query-persistence-off.txt"))
    training = FabricState().process(smi_of(a100 / "nvidia-smi-q-no-fabricmanager.txt"))
    cuda = {"ok": False, "error": "cuCtxCreate failed", "error_code": 802}
    wrong = hgx_target(gpu_count=4, minimum_drivers=(nvidia.MinimumDriver("590.1", "vLLM"),))
    problems = failed(nvidia.verify(wrong, smi, training, cuda, nvswitch=True))  # type: ignore[arg-type]
    assert "the host has 8 × NVIDIA A100-SXM4-80GB; the fleet declares 4" in problems["GPUs"].detail
    assert "580.95.05 < 590.1" in problems["driver version"].detail
    assert "off on GPU 0, 1" in problems["persistence mode"].detail
    assert "In Progress" in problems["NVSwitch fabric"].detail
    assert "Fabric Manager" in problems["CUDA"].detail and "802" in problems["CUDA"].detail
    assert "nvidia-fabricmanager" in problems["CUDA"].fix


@pytest.mark.parametrize(
    ("fixture", "meaning", "fix"),
    [
        ("nvidia-smi-mismatch.txt", "version mismatch", "reboot"),
        ("nvidia-smi-no-driver.txt", "not loaded", "dkms status"),
        ("nvidia-smi-missing.txt", "not installed", "deploy"),
    ],
)
def test_verify_when_the_driver_does_not_answer(fixture: str, meaning: str, fix: str) -> None:
    lines = (DATA / "errors" / fixture).read_text().splitlines()
    rc = lines[-1].removeprefix("[rc=").removesuffix("]")
    smi = NvidiaGpus().process([*lines[1:-1], f"{STATUS_PREFIX}{rc}"])
    (finding,) = nvidia.verify(hgx_target(), smi, [], None, nvswitch=True)
    assert not finding.ok and meaning in finding.detail and fix in finding.fix


def test_verify_the_toolkit_when_one_is_asked_for() -> None:
    a100 = DATA / "a100-8x-constructed"
    smi = NvidiaGpus().process(smi_of(a100 / "nvidia-smi-query-nounits.txt"))
    fabric = FabricState().process(smi_of(a100 / "nvidia-smi-q.txt"))
    target = hgx_target(cuda_toolkit="12.8")
    findings = nvidia.verify(target, smi, fabric, OK_CUDA, True, None)  # type: ignore[arg-type]
    assert (
        failed(findings)["CUDA toolkit"].fix == "install cuda-toolkit-12-8 from NVIDIA's repository"
    )
    toolkit = {"version": "12.8", "build": "12.8.93"}
    findings = nvidia.verify(target, smi, fabric, OK_CUDA, True, toolkit)  # type: ignore[arg-type]
    assert all(f.ok for f in findings) and findings[-1].detail == "12.8 (nvcc 12.8.93)"


def test_verify_the_recorded_h200_with_nothing_declared() -> None:
    h200 = DATA / "h200-ubuntu2404"
    smi = NvidiaGpus().process(smi_of(h200 / "nvidia-smi-query-nounits.txt"))
    target = nvidia.target_from_facts("@local", smi, local=True)
    import json

    cuda = json.loads((h200 / "cuda-driver-api-check.json").read_text())
    findings = nvidia.verify(target, smi, [], cuda, nvswitch=False)
    assert all(f.ok for f in findings), findings
    assert "nothing declared" in findings[0].detail
