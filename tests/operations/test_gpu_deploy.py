"""The GPU deploy through pyinfra (`@fake` connector, simulated hosts): the commands for each
release × {no driver, wrong branch, right driver, NVSwitch, no GPU, Secure Boot on}, and none on
a converged host.

The planned steps of the 8 × A100 NVSwitch host on Ubuntu 22.04 and 24.04 are kept in `plans/`
(regenerate with SERVEKIT_UPDATE_PLANS=1 and review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from gpu_scenarios import (
    DRIVER,
    NEWER_FM,
    hgx_a100,
    hgx_data,
    host,
    one_a100,
    single_a100_data,
    wrong_branch,
)
from gpu_simhost import Package, Run, SimHost, run_gpu_deploy

import servekit.operations.gpu_survey
import servekit.operations.nvidia

PLANS = Path(__file__).parent / "plans"
H200 = Path(__file__).resolve().parents[1] / "data/gpu-hosts/h200-ubuntu2404"
RELEASES = ["ubuntu2204", "ubuntu2404", "debian12"]
UBUNTU = ["ubuntu2204", "ubuntu2404"]

# What NVIDIA's repository installs for branch 580, open modules, per release.
DRIVER_PACKAGES = {
    "ubuntu2204": ["nvidia-open-580"],
    "ubuntu2404": ["nvidia-open-580"],
    "debian12": ["nvidia-driver-pinning-580", "nvidia-open"],
}


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servekit.operations.nvidia, "sleep", lambda seconds: None)


def deploy(sim: SimHost, data: dict[str, Any] | None, name: str = "gpu1") -> Run:
    return run_gpu_deploy({name: sim}, {name: data or {}})[name]


def converges(sim: SimHost, data: dict[str, Any] | None, name: str = "gpu1") -> None:
    """A second run on the same host changes nothing and succeeds."""
    again = deploy(sim, data, name)
    assert not again.failed, again
    assert again.changed == [], f"second run changed:\n{again}"


def installs(run: Run) -> list[str]:
    """Package arguments of every `apt-get install` the run made, in order."""
    names = []
    for command in run.commands():
        if "apt-get" in command and " install " in command:
            tail = command.split(" install ", 1)[1].split()
            names += [word for word in tail if not word.startswith("-")]
    return names


def check_plan(run: Run, name: str) -> None:
    path = PLANS / f"{name}.txt"
    text = f"{run}\n"
    if os.environ.get("SERVEKIT_UPDATE_PLANS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"plan for {name} changed; got:\n{text}"


# --- no driver ----------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_no_driver_installs_the_branch_holds_it_reboots_and_verifies(release: str) -> None:
    sim = host(release, one_a100())
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    kernel = f"linux-headers-{sim.kernel}"
    assert installs(run) == [kernel, *DRIVER_PACKAGES[release]]
    assert "cuda-keyring_1.1-1_all.deb" in run.step("repository key").commands[0]
    assert (
        f"/{release}/x86_64/" in sim.files["/etc/apt/sources.list.d/servekit-nvidia-cuda.sources"]
    )
    assert f"/etc/apt/sources.list.d/cuda-{release}-x86_64.list" not in sim.files
    hold = run.step("Hold").commands[0]
    assert all(p in hold for p in DRIVER_PACKAGES[release])
    assert "nvidia-fabricmanager" not in " ".join(run.commands())  # no NVSwitch
    assert run.step("Reboot").commands and sim.boots == 1
    assert sim.loaded_driver == DRIVER and sim.persistence_now
    assert "update-initramfs -u -k all" in run.step("initramfs").commands
    converges(sim, single_a100_data())


def test_debian_pins_the_branch_before_the_unversioned_driver() -> None:
    """Debian's repository has nvidia-open 590 too: the pinning package keeps it at 580."""
    sim = host("debian12", one_a100())
    deploy(sim, single_a100_data())
    assert sim.installed_version("nvidia-open") == f"{DRIVER}-1"
    assert sim.installed_version("nvidia-driver-pinning-580") == f"{DRIVER}-1"
    assert all(sim.packages[p].held for p in ("nvidia-open", "nvidia-smi", "libcuda1"))


# --- wrong branch -------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_wrong_branch_is_released_purged_and_replaced(release: str) -> None:
    sim = wrong_branch(release, one_a100())
    old = sorted(n for n in sim.packages if not n.startswith("linux-headers"))
    held = sorted(n for n in old if sim.packages[n].held)
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    removal = run.step("other branches").commands
    assert removal[0] == "apt-mark unhold " + " ".join(held)
    assert removal[1].endswith("purge " + " ".join(old))
    assert installs(run) == DRIVER_PACKAGES[release]  # headers were there
    left = {n: p.version for n, p in sim.packages.items() if n.startswith(("nvidia", "libnvidia"))}
    assert all(version.startswith(("580.", DRIVER)) for version in left.values()), left
    assert not any(name in sim.packages for name in old if "535" in name or "570" in name)
    assert run.step("Reboot").commands and sim.loaded_driver == DRIVER
    converges(sim, single_a100_data())


# --- right driver -------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_right_driver_installed_by_hand_gets_no_driver_change_and_no_reboot(release: str) -> None:
    """The branch is installed and loaded (by hand, through cuda-keyring's own list): servekit
    adds its files, holds and persistence, and neither reinstalls nor reboots."""
    sim = host(release, one_a100())
    sim.apt_lists = True
    for name in [f"linux-headers-{sim.kernel}", *DRIVER_PACKAGES[release]]:
        assert sim.install(f"apt-get install {name}")[0]
    sim.apt_lists = False
    sim.loaded_driver = DRIVER
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    assert installs(run) == []
    assert run.step("Reboot").commands == [] and sim.boots == 0
    assert run.step("Restart nvidia-persistenced with the new settings").commands == []
    assert run.step("Start nvidia-persistenced").commands == [
        "systemctl start nvidia-persistenced.service"
    ]
    assert sim.persistence_now
    converges(sim, single_a100_data())


@pytest.mark.parametrize("release", RELEASES)
def test_converged_host_gets_no_command(release: str) -> None:
    sim = host(release, hgx_a100())
    assert not deploy(sim, hgx_data(), "hgx1").failed
    converges(sim, hgx_data(), "hgx1")
    converges(sim, hgx_data(), "hgx1")


# --- NVSwitch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_nvswitch_host_gets_fabric_manager_at_the_drivers_exact_version(release: str) -> None:
    sim = host(release, hgx_a100())
    run = deploy(sim, hgx_data(), "hgx1")
    assert not run.failed, run
    fm = run.step("Fabric Manager and NSCQ").commands
    assert fm and fm[0].endswith(
        f"nvidia-fabricmanager={DRIVER}-1 libnvidia-nscq={DRIVER}-1"
    )  # not the newer {NEWER_FM} the repository also has
    assert f"{NEWER_FM}" not in " ".join(run.commands())
    assert sim.packages["nvidia-fabricmanager"].held and sim.packages["libnvidia-nscq"].held
    assert run.step("Enable Fabric Manager").commands == [
        "systemctl enable nvidia-fabricmanager.service"
    ]
    assert sim.fabric_manager_running() and sim.boots == 1
    converges(sim, hgx_data(), "hgx1")


@pytest.mark.parametrize("release", UBUNTU)
def test_planned_steps_for_an_8x_a100_hgx(release: str) -> None:
    run = deploy(host(release, hgx_a100()), hgx_data(), "hgx1")
    check_plan(run, f"hgx-8xa100-{release}")


def test_stopped_fabric_manager_is_started_and_verified() -> None:
    sim = host("ubuntu2404", hgx_a100())
    deploy(sim, hgx_data(), "hgx1")
    sim.services_running.discard("nvidia-fabricmanager.service")
    run = deploy(sim, hgx_data(), "hgx1")
    assert not run.failed, run
    assert [s.name for s in run.changed] == ["NVIDIA GPU host | Enable Fabric Manager"]
    assert run.changed[0].commands == ["systemctl start nvidia-fabricmanager.service"]


def test_fabric_manager_missing_for_the_driver_stops_the_host() -> None:
    sim = host("ubuntu2204", hgx_a100())
    sim.repository["nvidia-fabricmanager"] = {f"{NEWER_FM}-1": []}
    run = deploy(sim, hgx_data(), "hgx1")
    assert run.failed
    message = run.step("Fabric Manager and NSCQ").commands[0]
    assert f"no nvidia-fabricmanager for driver {DRIVER}" in message
    assert f"offers: {NEWER_FM}-1" in message
    assert sim.boots == 0


# --- no GPU -------------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_no_gpu_with_gpus_declared_is_an_error_naming_the_host(release: str) -> None:
    sim = host(release, None)
    run = deploy(sim, single_a100_data())
    assert run.failed
    assert [s.name for s in run.steps] == ["NVIDIA GPU host | Declared GPUs are missing"]
    assert "servekit: @fake/gpu1: the fleet declares 1 × A100-SXM4-80GB" in run.commands()[0]
    assert sim.packages == {} and not sim.files


@pytest.mark.parametrize("release", RELEASES)
def test_no_gpu_and_nothing_declared_changes_nothing(release: str) -> None:
    sim = host(release, None)
    run = deploy(sim, None)
    assert not run.failed and run.steps == []
    assert sim.packages == {} and not sim.files


# --- Secure Boot --------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_secure_boot_without_an_enrolled_key_stops_before_any_change(release: str) -> None:
    sim = host(release, one_a100(), secure_boot=True)
    run = deploy(sim, single_a100_data())
    assert run.failed
    assert [s.name for s in run.steps] == ["NVIDIA GPU host | Secure Boot blocks the driver"]
    assert "mokutil --import" in run.commands()[0]
    assert sim.packages == {} and not sim.files


@pytest.mark.parametrize("release", RELEASES)
def test_secure_boot_with_the_dkms_key_enrolled_installs(release: str) -> None:
    sim = host(release, one_a100(), secure_boot=True, enrolled_keys=("/var/lib/dkms/mok.pub",))
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    assert sim.loaded_driver == DRIVER
    converges(sim, single_a100_data())


@pytest.mark.parametrize("release", RELEASES)
def test_secure_boot_on_a_converged_host_changes_nothing(release: str) -> None:
    sim = host(release, one_a100())
    deploy(sim, single_a100_data())
    sim.secure_boot = True
    converges(sim, single_a100_data())


# --- reboots, @local, options ---------------------------------------------------------------------


def test_local_host_is_never_rebooted_and_is_told_why() -> None:
    sim = host("ubuntu2404", one_a100())
    data = single_a100_data()
    data["servekit"]["connection"] = "local"
    run = deploy(sim, data)
    assert not run.failed, run
    assert run.step("Say that a reboot is needed").commands == ["<python: _reboot_reminder>"]
    assert sim.boots == 0 and not any("Reboot" in s.name for s in run.steps)
    assert run.step("Verify").commands == []  # verified after the user's reboot


def test_a_host_the_fleet_gives_no_nvidia_gpu_is_left_alone() -> None:
    from gpu_scenarios import plan_data

    sim = host("ubuntu2404", one_a100())
    run = deploy(sim, plan_data("laptop.py", "local"))
    assert not run.failed and run.steps == [] and not sim.files


def test_reboot_turned_off() -> None:
    sim = host("ubuntu2204", one_a100())
    run = deploy(sim, single_a100_data(reboot=False))
    assert sim.boots == 0 and run.step("Say that a reboot is needed").commands


def test_hosts_reboot_in_batches_never_all_at_once() -> None:
    sims = {f"n{i}": host("ubuntu2204", one_a100()) for i in range(3)}
    data = {name: single_a100_data(reboot_batch=8) for name in sims}
    runs = run_gpu_deploy(sims, data)
    for run in runs.values():
        assert run.step("Reboot").parallel == 2
    assert all(sim.boots == 1 for sim in sims.values())


def test_nouveau_loaded_reboots_even_without_a_driver_change() -> None:
    sim = host("ubuntu2404", one_a100())
    deploy(sim, single_a100_data())
    sim.nouveau_loaded = True
    run = deploy(sim, single_a100_data())
    assert run.step("Reboot").commands and not sim.nouveau_loaded


def test_cuda_toolkit_and_dcgm() -> None:
    sim = host("ubuntu2204", hgx_a100())
    data = hgx_data(cuda_toolkit="12.8", dcgm=True)
    run = deploy(sim, data, "hgx1")
    assert not run.failed, run
    assert "cuda-toolkit-12-8" in installs(run)
    assert "datacenter-gpu-manager-4-proprietary" in installs(run)  # A100: profiling metrics
    profile = sim.files["/etc/profile.d/servekit-cuda.sh"]
    assert 'PATH="/usr/local/cuda-12.8/bin' in profile and "LD_LIBRARY_PATH" not in profile
    assert {"nvidia-dcgm.service", "nvidia-dcgm-exporter.service"} <= sim.services_enabled
    converges(sim, data, "hgx1")


def test_a_cuda_13_1_toolkit_goes_on_the_580_driver() -> None:
    """Minor-version compatibility: branch 580 (reports CUDA 13.0) runs every 13.x toolkit
    (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html); it used to
    stop with "Unsupported versions"."""
    sim = host("ubuntu2404", one_a100())
    sim.repository["cuda-toolkit-13-1"] = {"13.1.0-1": []}
    data = single_a100_data(cuda_toolkit="13.1")
    assert data["servekit"]["versions"]["driver_branch"] == 580
    run = deploy(sim, data)
    assert not run.failed, run
    assert "cuda-toolkit-13-1" in installs(run) and "nvidia-open-580" in installs(run)
    assert 'PATH="/usr/local/cuda-13.1/bin' in sim.files["/etc/profile.d/servekit-cuda.sh"]


def test_toolkit_the_release_lacks_stops_before_any_change() -> None:
    sim = host("ubuntu2404", one_a100())
    run = deploy(sim, single_a100_data(cuda_toolkit="12.4"))
    assert run.failed and [s.name for s in run.steps] == ["NVIDIA GPU host | Unsupported versions"]
    assert "starts at CUDA 12.5" in run.commands()[0] and not sim.files


def test_unsupported_release_stops() -> None:
    sim = host("ubuntu2204", one_a100())
    sim.os_release = sim.os_release.replace('VERSION_ID="22.04"', 'VERSION_ID="20.04"')
    run = deploy(sim, single_a100_data())
    assert run.failed and "ubuntu 20.04 is not supported" in run.commands()[0]


def test_an_interrupted_first_run_refreshes_apt() -> None:
    """Repository written but `apt-get update` never ran: the next run still updates."""
    sim = host("ubuntu2404", one_a100())
    deploy(sim, single_a100_data())
    sim.apt_lists = False
    sim.packages.pop("nvidia-open-580")
    run = deploy(sim, single_a100_data())
    assert run.step("apt knows").commands == ["apt-get update"]
    assert installs(run) == ["nvidia-open-580"]


def test_nvswitch_declared_but_not_found_is_said(caplog: pytest.LogCaptureFixture) -> None:
    board = hgx_a100()
    board.nvswitches = 0
    sim = host("ubuntu2404", board)
    run = deploy(sim, hgx_data(), "hgx1")
    assert not run.failed, run
    assert "usually come with NVSwitch, but none is on the PCI bus" in caplog.text
    assert "nvidia-fabricmanager" not in sim.packages


def test_verification_names_a_declaration_the_host_does_not_match() -> None:
    sim = host("ubuntu2404", one_a100())
    run = deploy(sim, hgx_data(), "hgx1")  # the fleet says 8 × A100 with NVSwitch
    assert run.failed
    message = run.step("Verify").commands[0]
    assert (
        "the host has 1 × NVIDIA A100-SXM4-80GB; the fleet declares 8 × A100-SXM4-80GB" in message
    )


def recorded_h200() -> SimHost:
    """The recorded H200 host (Ubuntu 24.04, driver 580.159.04 from outside apt, no systemd):
    its facts answer with the outputs recorded there."""
    lines = lambda name: (H200 / name).read_text().splitlines()[1:-1]  # noqa: E731
    probed = lambda name: [*lines(name), "servekit-status=0"]  # noqa: E731
    check = (H200 / "cuda-driver-api-check.json").read_text().strip()
    sim = host("ubuntu2404", None, systemd=False)
    sim.kernel = lines("uname.txt")[0].split()[2]
    for row in lines("dpkg-nvidia.txt"):  # the recorded packages, changed by what the deploy does
        status, name, version = row.split()[:3]
        sim.packages[name] = Package(version, held=status.startswith("h"))
    sim.recorded = {
        "--query-gpu=": probed("nvidia-smi-query-nounits.txt"),
        "then nvidia-smi -q": probed("nvidia-smi-q.txt"),
        "/proc/driver/nvidia/version": lines("proc-driver-version.txt"),
        "/sys/bus/pci/devices": lines("servekit-pci-devices.txt"),
    }
    sim.recorded_cuda_check = [check, "servekit-status=0"]
    return sim


def test_the_recorded_h200_is_recognised() -> None:
    """`pyinfra @local deploys/gpu.py` there, without servekit data: the driver (580, open, not
    from apt) is left alone, nothing needs NVIDIA's repository (the host has no network), no
    unit is written (no systemd), nothing reboots, and it verifies."""
    sim = recorded_h200()
    run = deploy(sim, None)
    assert not run.failed, run
    assert installs(run) == [] and sim.boots == 0
    assert not any("apt-get" in c or "apt-helper" in c for c in run.commands())
    names = " ".join(s.name for s in run.steps)
    assert "nvidia-persistenced" not in names and "Hold the NVIDIA" not in names, names
    assert run.step("Reboot").commands == []  # only a loaded nouveau would reboot it
    assert run.step("Turn persistence mode on").commands == []  # recorded: Enabled
    assert run.step("Verify").commands == []
    converges(sim, None)


def test_driver_from_outside_apt_of_another_branch_is_left_alone_with_an_error() -> None:
    sim = host("ubuntu2404", one_a100(), loaded_driver="570.172.08", driver_from_outside_apt=True)
    run = deploy(sim, single_a100_data())
    assert (
        run.failed
        and "servekit does not replace a driver it did not install" in (run.commands()[0])
    )
    assert sim.packages == {}


def test_held_packages_survive_a_flavour_switch() -> None:
    """Proprietary modules installed and held on an A100: replaced by the open ones."""
    sim = host("ubuntu2204", one_a100())
    sim.apt_lists = True
    assert sim.install("apt-get install cuda-drivers-580")[0]
    for package in sim.packages.values():
        package.held = True
    sim.packages[f"linux-headers-{sim.kernel}"] = Package("1")
    sim.loaded_driver = DRIVER
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    assert "purge cuda-drivers-580" in run.step("other branches").commands[1]
    assert "nvidia-dkms-580-open" in sim.packages and sim.boots == 1


def test_the_deploy_file_runs_at_local_without_servekit_data() -> None:
    """`pyinfra @local deploys/gpu.py` on this machine, dry: it says where its settings come from
    and what it finds (here no NVIDIA GPU: nothing to do)."""
    import subprocess
    import sys

    from servekit.facts.nvidia import NvidiaPciDevices

    root = Path(__file__).resolve().parents[2]
    pyinfra = Path(sys.executable).with_name("pyinfra")
    done = subprocess.run(
        [str(pyinfra), "-y", "@local", "deploys/gpu.py", "--dry"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "no servekit host data: using catalog defaults" in done.stderr
    pci = subprocess.run(["sh", "-c", NvidiaPciDevices().command()], capture_output=True, text=True)
    if not NvidiaPciDevices().process(pci.stdout.splitlines()):
        assert "no NVIDIA device on this host: nothing to do" in done.stderr


# --- the repository key and the mirror ----------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_a_tampered_keyring_package_is_refused_before_dpkg(release: str) -> None:
    """The cuda-keyring .deb is checked against its pin (catalog) between download and dpkg."""
    sim = host(release, one_a100(), keyring_tampered=True)
    run = deploy(sim, single_a100_data())
    assert run.failed
    step = run.step("repository key")
    assert "sha256sum" in step.commands[1] and "dpkg" not in " ".join(step.commands)
    assert "cuda-keyring" not in sim.packages
    assert "/usr/share/keyrings/cuda-archive-keyring.gpg" not in sim.files
    assert run.step("Add NVIDIA's CUDA repository").commands == []  # the host stopped there
    assert not sim.apt_lists


def test_a_host_override_of_the_keyring_pin_is_what_the_check_compares() -> None:
    sim = host("ubuntu2404", one_a100())
    data = single_a100_data()
    data["servekit_cuda_keyring_sha256"] = "b" * 64
    run = deploy(sim, data)
    assert run.failed
    assert f'[ "$have" = {"b" * 64} ]' in run.step("repository key").commands[1]
    assert "cuda-keyring" not in sim.packages


@pytest.mark.parametrize(
    "mirror",
    ["https://m.example/repos\nTrusted: yes", "https://u:p@m.example/repos", "https://m/a b"],
)
def test_a_mirror_that_could_extend_the_apt_sources_stops_before_any_change(mirror: str) -> None:
    sim = host("ubuntu2404", one_a100())
    data = single_a100_data()
    data["servekit"]["sources"]["nvidia_apt"] = mirror
    run = deploy(sim, data)
    assert run.failed
    assert [s.name for s in run.steps] == ["NVIDIA GPU host | Unsupported host"]
    assert "sources.nvidia_apt" in run.commands()[0]
    assert sim.packages == {} and not sim.files


def test_a_mirror_login_goes_to_apt_auth_conf_d_root_only(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine mirror.example login alice password s3cr3t-P4ss\n")
    netrc.chmod(0o600)
    sim = host("ubuntu2404", one_a100())
    data = single_a100_data()
    data["servekit"]["sources"]["mirror_credentials"] = {"file": str(netrc), "env": None}
    run = deploy(sim, data)
    assert not run.failed, run
    auth = "/etc/apt/auth.conf.d/servekit.conf"
    assert "machine mirror.example login alice password s3cr3t-P4ss" in sim.files[auth]
    assert sim.modes[auth] == 0o600
    assert "s3cr3t" not in " ".join(run.commands())
    names = [s.name for s in run.steps]
    write = names.index("NVIDIA GPU host | Write the mirror login for apt (" + auth + ", 0600)")
    assert write < names.index("NVIDIA GPU host | Install NVIDIA's repository key (cuda-keyring)")
    converges(sim, data)


# --- a host that arrives with a newer driver branch (issue 15) -----------------------------------

DLAMI_DRIVER = "595.91.07"  # the Deep Learning Base AMIs of late 2026 (DLAMI release notes)


@pytest.fixture
def december_2026(monkeypatch: pytest.MonkeyPatch) -> None:
    """R595 is a Production Branch until March 2027 (NVIDIA's table): fix the month."""
    monkeypatch.setattr(servekit.operations.gpu_survey, "this_month", lambda: "2026-12")


def debian_with_595() -> SimHost:
    """Debian 12 with NVIDIA's branch 595 packages (pinning package, unversioned names) loaded."""
    sim = host("debian12", one_a100(), loaded_driver=DLAMI_DRIVER)
    v = f"{DLAMI_DRIVER}-1"
    sim.repository["nvidia-driver-pinning-595"] = {v: []}
    for name in (
        "nvidia-open",
        "nvidia-driver",
        "nvidia-kernel-open-dkms",
        "nvidia-smi",
        "libcuda1",
    ):
        sim.repository[name][v] = []
    for name in ("nvidia-driver-pinning-595", "nvidia-open", "nvidia-driver",
                 "nvidia-kernel-open-dkms", "nvidia-smi", "libcuda1"):  # fmt: skip
        sim.packages[name] = Package(v)
    sim.packages[f"linux-headers-{sim.kernel}"] = Package("1")
    sim.apt_lists = True
    return sim


def pinned_580() -> dict[str, Any]:
    """The single A100 fleet with Versions(driver_branch=580) set explicitly."""
    data = single_a100_data()
    data["servekit"]["versions"]["driver_branch_pinned"] = True
    return data


def test_a_newer_supported_branch_is_kept_not_downgraded(
    december_2026: None, caplog: pytest.LogCaptureFixture
) -> None:
    sim = debian_with_595()
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    assert installs(run) == [] and sim.boots == 0
    assert not any("purge" in c for c in run.commands())
    assert sim.installed_version("nvidia-open") == f"{DLAMI_DRIVER}-1"
    assert "newer than servekit's default 580: kept, not downgraded" in caplog.text
    assert run.step("Verify").commands == []  # 595 >= vLLM's 580.65.06
    assert all(sim.packages[p].held for p in ("nvidia-open", "nvidia-driver-pinning-595"))
    converges(sim, single_a100_data())


def test_a_pinned_branch_replaces_the_newer_one(december_2026: None) -> None:
    sim = debian_with_595()
    run = deploy(sim, pinned_580())
    assert not run.failed, run
    assert "nvidia-driver-pinning-595" in run.step("other branches").commands[-1]
    assert installs(run)[:2] == DRIVER_PACKAGES["debian12"]
    assert sim.installed_version("nvidia-open") == f"{DRIVER}-1" and sim.boots == 1


def runfile_595() -> SimHost:
    """Driver 595 installed with NVIDIA's runfile: loaded, no package, nvidia-uninstall there."""
    sim = host("ubuntu2404", one_a100(), loaded_driver=DLAMI_DRIVER, driver_from_outside_apt=True)
    sim.recorded["command -v nvidia-uninstall"] = ["/usr/bin/nvidia-uninstall"]
    return sim


def test_a_runfile_driver_of_a_newer_branch_is_kept_and_reported_with_what_to_do(
    december_2026: None, caplog: pytest.LogCaptureFixture
) -> None:
    sim = runfile_595()
    run = deploy(sim, single_a100_data())
    assert not run.failed, run
    assert installs(run) == [] and sim.packages == {} and sim.boots == 0
    said = caplog.text
    assert f"driver {DLAMI_DRIVER} (open) was installed with NVIDIA's runfile" in said
    assert "`sudo nvidia-uninstall`, reboot and deploy again" in said


def test_a_runfile_driver_the_fleet_does_not_want_stops_with_what_to_do(
    december_2026: None,
) -> None:
    sim = runfile_595()
    run = deploy(sim, pinned_580())
    assert run.failed and sim.packages == {}
    message = run.commands()[0]
    assert "runfile (nvidia-uninstall is present) (not branch 580)" in message
    assert "`sudo nvidia-uninstall`, reboot" in message
