"""A simulated Debian/Ubuntu GPU host for running servekit's GPU deploy through pyinfra's `@fake`
connector: it answers the commands the deploy's facts run from its state (recorded output
formats) and applies what the deploy's commands would do (apt, dpkg, files, systemd, reboot).

It is as small as the GPU deploy needs and no smaller: enough for a second run on the same host
to see the first run's effects, so that "a converged host gets no command" is tested, not assumed.
The real apt and systemd behaviour is tested on the bench hosts (tests/hosts).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import uuid
from dataclasses import dataclass, field
from io import IOBase
from pathlib import Path
from typing import Any

from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops
from pyinfra.connectors.util import CommandOutput, OutputLine

from servekit import catalog

STATUS = "servekit-status="
PROC_DEVICES = Path(__file__).resolve().parents[1] / "data/proc-devices"
# The device groups CUDA opens per driver branch (see servekit/systemd.py for the sources):
# the GPUs and the control device at major 195, and UVM.
CUDA_GROUPS_545_ON = ("nvidia", "nvidiactl", "nvidia-uvm")
CUDA_GROUPS_535 = ("nvidia-frontend", "nvidia-uvm")
KEYRING_URL = re.compile(r"download-file '?(\S+?/([a-z0-9]+)/([a-z0-9_]+)/cuda-keyring_[^ ']+)'? ")


def upstream(version: str) -> str:
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def newest(versions: list[str]) -> str:
    return max(versions, key=lambda v: (catalog.version_tuple(upstream(v)), v))


@dataclass
class Package:
    version: str
    held: bool = False


@dataclass
class GpuBoard:
    """The GPUs as nvidia-smi prints them once a driver runs, and the NVSwitch chips."""

    name: str
    count: int
    memory_mib: int
    compute_cap: str
    pci_device: str
    nvswitches: int = 0

    def pci_lines(self) -> list[str]:
        gpus = [
            f"0000:{0x07 + 8 * i:02x}:00.0 0x030200 {self.pci_device}" for i in range(self.count)
        ]
        switches = [f"0000:{0xC4 + i:02x}:00.0 0x068000 0x1af1" for i in range(self.nvswitches)]
        return gpus + switches


@dataclass
class SimHost:
    """One host. `repository` is what NVIDIA's repository (or mirror) offers: name -> version ->
    dependencies ('name' or 'name=version'); `archive` is what the distribution offers."""

    os_release: str
    kernel: str
    board: GpuBoard | None
    repository: dict[str, dict[str, list[str]]]
    archive: dict[str, dict[str, list[str]]]
    mirror: str = "https://developer.download.nvidia.com/compute/cuda/repos"
    packages: dict[str, Package] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: set(BASE_DIRS))
    loaded_driver: str | None = None  # version of the running kernel module
    driver_from_outside_apt: bool = False
    nouveau_loaded: bool = False
    systemd: bool = True
    initramfs_tools: bool = True
    secure_boot: bool = False
    enrolled_keys: tuple[str, ...] = ()
    persistence_now: bool = False
    services_running: set[str] = field(default_factory=set)
    services_enabled: set[str] = field(default_factory=set)
    apt_lists: bool = False  # apt knows NVIDIA's repository (after `apt-get update`)
    recorded: dict[str, list[str]] = field(default_factory=dict)  # command fragment -> output
    recorded_cuda_check: list[str] | None = None  # the CUDA check's own output, if recorded
    # /proc/devices (tests/data/proc-devices/NAME.txt): by default the loaded driver's branch
    proc_devices: str | None = None
    sandbox_hides_gpus: bool = False  # a sandbox that denies a device CUDA needs
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    boots: int = 0
    reboot_pending: bool = False
    log: list[str] = field(default_factory=list)
    keyring_tampered: bool = False  # the mirror serves a cuda-keyring .deb that is not NVIDIA's
    stdin: str | None = None  # what the command being run gets on standard input

    # --- what the host looks like -----------------------------------------------------------

    def installed_version(self, name: str) -> str | None:
        package = self.packages.get(name)
        return package.version if package else None

    def userspace_driver(self) -> str | None:
        """The driver release of the installed libraries (nvidia-smi's), if any."""
        for name, package in self.packages.items():
            if name.startswith(("nvidia-utils", "nvidia-smi")):
                return upstream(package.version)
        return self.loaded_driver if self.driver_from_outside_apt else None

    def fabric_manager_running(self) -> bool:
        return "nvidia-fabricmanager.service" in self.services_running

    def fabric_manager_starts(self) -> bool:
        """Fabric Manager refuses to start unless its version is exactly the driver's."""
        version = self.installed_version("nvidia-fabricmanager")
        return version is not None and upstream(version) == self.loaded_driver

    def smi_state(self) -> str:
        if self.userspace_driver() is None:
            return "missing"
        if self.loaded_driver is None:
            return "no_driver"
        if self.loaded_driver != self.userspace_driver():
            return "mismatch"
        return "ok"

    def smi_query(self) -> list[str]:
        state = self.smi_state()
        if state == "missing":
            return [f"{STATUS}missing"]
        if state == "no_driver":
            return [
                "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                "Make sure that the latest NVIDIA driver is installed and running.",
                "",
                f"{STATUS}9",
            ]
        if state == "mismatch":
            return ["Failed to initialize NVML: Driver/library version mismatch", f"{STATUS}18"]
        assert self.board is not None
        persistence = "Enabled" if self.persistence_now else "Disabled"
        rows = [
            f"{i}, {self.board.name}, GPU-{i:08x}-0000-0000-0000-000000000000, "
            f"{self.board.memory_mib}, {self.loaded_driver}, {self.board.compute_cap}, "
            f"00000000:{0x07 + 8 * i:02x}:00.0, {persistence}, Disabled"
            for i in range(self.board.count)
        ]
        return [*rows, f"{STATUS}0"]

    def smi_q(self) -> list[str]:
        if self.smi_state() != "ok":
            return self.smi_query()
        assert self.board is not None
        state, status = "N/A", "N/A"
        if self.board.nvswitches:
            trained = self.fabric_manager_running()
            state, status = ("Completed", "Success") if trained else ("In Progress", "N/A")
        lines = [f"Driver Version                                         : {self.loaded_driver}"]
        for i in range(self.board.count):
            lines += [
                f"GPU 00000000:{0x07 + 8 * i:02x}:00.0",
                f"    Product Name                                       : {self.board.name}",
                "    Fabric",
                f"        State                                          : {state}",
                f"        Status                                         : {status}",
            ]
        return [*lines, f"{STATUS}0"]

    def cuda_check(self) -> list[str]:
        if self.smi_state() != "ok" or self.board is None:
            error = '{"ok": false, "error": "libcuda.so.1: not found", "error_code": null}'
            return [error, f"{STATUS}1"]
        if self.board.nvswitches and not self.fabric_manager_running():
            return ['{"ok": false, "error": "cuCtxCreate: 802", "error_code": 802}', f"{STATUS}1"]
        ok = {"ok": True, "error": None, "devices": self.board.count, "driver_cuda_version": "13.0"}
        return [json.dumps(ok), f"{STATUS}0"]

    def proc_devices_lines(self) -> list[str]:
        name = self.proc_devices
        if name is None:
            branch = int(self.loaded_driver.split(".")[0]) if self.loaded_driver else 0
            name = "no-gpu" if not branch else "branch-535" if branch < 545 else "branch-580"
        return (PROC_DEVICES / f"{name}.txt").read_text().splitlines()

    def sandboxed_cuda_check(self, command: str) -> list[str]:
        """The check as `cuda_check_command` runs it: in the sandbox where systemd runs (CUDA
        fails there unless the sandbox allows the groups the driver registers), and plainly
        after a failure there or without systemd."""
        plain = self.recorded_cuda_check or self.cuda_check()
        if not self.systemd:
            return ["servekit-cuda-sandbox=none", *plain]
        assert command.index("systemd-run") < command.index("cuda_check.py")
        registered = {line.split()[1] for line in self.proc_devices_lines() if line[:1] == " "}
        registered |= {line.split()[1] for line in self.proc_devices_lines() if line[:1].isdigit()}
        needed = CUDA_GROUPS_545_ON if "nvidia" in registered else CUDA_GROUPS_535
        allowed = set(re.findall(r"DeviceAllow=char-([\w-]+) rw", command))
        if self.sandbox_hides_gpus or not set(needed) <= allowed:
            hidden = '{"ok": false, "error": "cuInit failed with CUDA_ERROR_NO_DEVICE (100)", '
            hidden += '"error_code": 100}'
            return [
                "servekit-cuda-sandbox=systemd",
                hidden,
                "servekit-cuda-unsandboxed",
                *plain[:-1],
                f"{STATUS}1",
            ]
        return ["servekit-cuda-sandbox=systemd", *plain]

    def available(self, name: str) -> dict[str, list[str]]:
        offered = dict(self.archive.get(name, {}))
        if self.apt_lists:
            offered.update(self.repository.get(name, {}))
        return offered

    def candidate(self, name: str) -> str | None:
        versions = list(self.available(name))
        pinned = [p for p in self.packages if p.startswith("nvidia-driver-pinning-")]
        if pinned and versions and (name.startswith(("nvidia-", "libnvidia-", "cuda-drivers"))):
            branch = pinned[0].rsplit("-", 1)[1]
            versions = [v for v in versions if upstream(v).startswith(f"{branch}.")] or versions
        return newest(versions) if versions else None

    # --- answering commands -----------------------------------------------------------------

    def respond(self, command: str) -> tuple[bool, list[str]]:
        self.log.append(command)
        for fragment, output in self.recorded.items():
            if fragment in command:
                return True, output
        if "--query-gpu=" in command:
            return True, self.smi_query()
        if "nvidia-smi -q" in command:
            return True, self.smi_q()
        if "/sys/bus/pci/devices" in command:
            return True, self.board.pci_lines() if self.board else []
        if "nvidia-nvswitch/devices" in command:
            loaded = self.loaded_driver and self.board and self.board.nvswitches
            return True, [f"0000:{0xC4 + i:02x}:00.0" for i in range(self.board.nvswitches)] if (
                loaded and self.board
            ) else []
        if "/proc/driver/nvidia/version" in command:
            if self.loaded_driver is None:
                return True, []
            return True, [
                "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
                f"{self.loaded_driver}  Release Build  (dvs-builder@U16)  Thu Sep 18 2025"
            ]
        if "db:Status-Abbrev}|${Package}" in command:
            return True, [
                f"{'h' if p.held else 'i'}i |{name}|{p.version}"
                for name, p in self.packages.items()
            ]
        if command.startswith("k=$(uname -r)"):
            headers = f"linux-headers-{self.kernel}"
            return True, [self.kernel, "ii " if headers in self.packages else ""]
        if "/sys/firmware/efi" in command:
            lines = [f"secureboot={int(self.secure_boot)}"]
            lines += [f"key={k} {k} is already enrolled" for k in self.enrolled_keys]
            return True, lines
        if "apt-cache madison" in command:
            name = shlex.split(command)[2]
            return True, [
                f" {name} | {v} | {self.mirror}/x86_64  Packages"
                for v in sorted(
                    self.available(name),
                    key=lambda v: catalog.version_tuple(upstream(v)),
                    reverse=True,
                )
            ]
        if "servekit-cuda-sandbox=" in command and "cuda_check.py" in command:
            return True, self.sandboxed_cuda_check(command)
        if "then python3 " in command and "cuda_check.py" in command:
            return True, self.cuda_check()
        if command.startswith("cat /proc/devices"):
            return True, self.proc_devices_lines()
        if "random/boot_id" in command:
            return True, [self.boot_id]
        if "nvcc" in command:
            match = re.search(r"/usr/local/cuda-(\d+\.\d+)/", command)
            toolkit = match and f"cuda-toolkit-{match.group(1).replace('.', '-')}" in self.packages
            if not toolkit:
                return True, []
            assert match is not None
            release = match.group(1)
            return True, [f"Cuda compilation tools, release {release}, V{release}.93", f"{STATUS}0"]
        if command == "cat /etc/os-release 2>/dev/null || true":
            return True, self.os_release.splitlines()
        if command == "uname -m":
            return True, ["x86_64"]
        if command == "uname -s":
            return True, ["Linux"]
        if "dpkg -l" in command:
            return True, [
                f"ii  {n}  {p.version}  amd64  stand-in" for n, p in self.packages.items()
            ]
        if "/proc/modules" in command:
            return True, [
                "nouveau 2883584 0 - Live 0x0000000000000000"
            ] if self.nouveau_loaded else []
        if command.startswith("command -v"):
            program = shlex.split(command)[2]
            known = {"systemctl": self.systemd, "update-initramfs": self.initramfs_tools}
            return True, [f"/usr/sbin/{program}"] if known.get(program) else []
        if match := re.search(r"stat -c '[^']*' (\S+) 2>", command):
            return True, self.stat(shlex.split(match.group(1))[0])
        if match := re.search(r"sha256sum (\S+) 2>", command):
            path = shlex.split(match.group(1))[0]
            if path in self.files:
                digest = hashlib.sha256(self.files[path].encode()).hexdigest()
                return True, [f"{digest}  {path}"]
            return True, []
        if match := re.search(r"sha1sum (\S+) 2>", command):
            path = shlex.split(match.group(1))[0]
            if path in self.files:
                digest = hashlib.sha1(self.files[path].encode()).hexdigest()
                return True, [f"{digest}  {path}"]
            return True, []
        if "systemctl show" in command:
            return True, self.systemctl_show(command)
        return self.apply(command)

    def stat(self, path: str) -> list[str]:
        if path in self.files:
            mode = self.modes.get(path, 0o644)
            perms = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
            size = len(self.files[path])
            return [
                f"user=root group=root mode=-{perms} atime=0 mtime=0 ctime=0 size={size} '{path}'"
            ]
        if path in self.dirs or (path == "/run/systemd/system" and self.systemd):
            return [
                f"user=root group=root mode=drwxr-xr-x atime=0 mtime=0 ctime=0 size=4096 '{path}'"
            ]
        return []

    def systemctl_show(self, command: str) -> list[str]:
        units = re.findall(r"'?([\w@.-]+\.service)'?", command)
        key = "UnitFileState" if "UnitFileState" in command else "SubState"
        lines = []
        for unit in units:
            if key == "SubState":
                value = "running" if unit in self.services_running else "dead"
            else:
                value = "enabled" if unit in self.services_enabled else "disabled"
            lines += [f"Id={unit}", f"{key}={value}", ""]
        return lines

    # --- applying commands ------------------------------------------------------------------

    def apply(self, command: str) -> tuple[bool, list[str]]:
        if "apt-helper download-file" in command:
            match = KEYRING_URL.search(command + " ")
            assert match, command
            self.files["/tmp/downloaded-keyring"] = match.group(1)
            return True, []
        if command.startswith("have=$(sha256sum") and "cuda-keyring" in command:
            # the downloaded .deb's digest: NVIDIA's (the catalog pin of its directory and
            # architecture), or another one when the mirror serves a tampered package
            url = self.files["/tmp/downloaded-keyring"]
            directory, arch = url.rsplit("/", 3)[1:3]
            have = (
                "0" * 64 if self.keyring_tampered else catalog.cuda_keyring_sha256(directory, arch)
            )
            pinned = re.search(r'\[ "\$have" = \'?([0-9a-f]{64})', command)
            assert pinned, command
            if have == pinned.group(1):
                return True, []
            self.files.pop("/tmp/downloaded-keyring")
            return False, [shlex.split(command.split("printf '%s\\n' ", 1)[1].split(" >&2")[0])[0]]
        if command.startswith("umask 077 && mkdir -p "):
            # servekit.operations.credentials.write_command: the content is on standard input
            path = shlex.split(command.rsplit(' && mv -f "$tmp" ', 1)[1])[0]
            assert self.stdin is not None, command
            self.files[path], self.modes[path] = self.stdin, 0o600
            return True, []
        if command.startswith("dpkg --force-confdef --force-confold -i"):
            url = self.files.pop("/tmp/downloaded-keyring")
            directory, arch = url.rsplit("/", 3)[1:3]
            self.packages["cuda-keyring"] = Package("1.1-1")
            self.files["/usr/share/keyrings/cuda-archive-keyring.gpg"] = "NVIDIA key"
            self.files[f"/etc/apt/sources.list.d/cuda-{directory}-{arch}.list"] = (
                "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
                f"https://developer.download.nvidia.com/compute/cuda/repos/{directory}/{arch}/ /\n"
            )
            return True, []
        if command.startswith(("rm -f", "rm ")):
            for path in shlex.split(command)[2:]:
                self.files.pop(path, None)
            return True, []
        if command.startswith("mkdir -p"):
            self.dirs.add(shlex.split(command)[2])
            return True, []
        if command.startswith("chmod"):
            mode, path = shlex.split(command)[-2:]
            self.modes[path] = int(mode, 8)
            return True, []
        if command.startswith(("chown", "touch", "update-initramfs", "systemctl daemon-reload")):
            return True, []
        if "apt-get update" in command:
            sources = "\n".join(
                v for k, v in self.files.items() if k.startswith("/etc/apt/sources")
            )
            self.apt_lists = self.mirror in sources and "cuda-archive-keyring" in sources
            return True, []
        if command.startswith("apt-mark"):
            words = shlex.split(command)
            for name in words[2:]:
                if name in self.packages:
                    self.packages[name].held = words[1] == "hold"
            return True, []
        if "apt-get" in command and (" purge " in command or " remove " in command):
            return self.remove(command)
        if "apt-get" in command and " install " in command:
            return self.install(command)
        if match := re.match(r"systemctl (start|restart|enable|stop) '?([\w@.-]+)'?", command):
            verb, unit = match.groups()
            if verb == "enable":
                self.services_enabled.add(unit)
            elif verb in ("start", "restart"):
                if self.smi_state() != "ok":
                    return False, [f"Job for {unit} failed: the NVIDIA driver is not loaded"]
                if unit == "nvidia-fabricmanager.service" and not self.fabric_manager_starts():
                    return False, [f"Job for {unit} failed: version does not match the driver"]
                self.services_running.add(unit)
                self.persistence_now |= (
                    unit == "nvidia-persistenced.service" and self.persistenced_configured()
                )
            return True, []
        if command == "nvidia-smi -pm 1":
            self.persistence_now = True
            return True, []
        if "systemctl reboot" in command:
            self.reboot_pending = True
            return True, []
        if command.startswith("printf"):
            return False, [shlex.split(command)[2]]
        raise AssertionError(f"the simulated host does not know this command: {command}")

    def persistenced_configured(self) -> bool:
        dropin = self.files.get(
            "/etc/systemd/system/nvidia-persistenced.service.d/servekit.conf", ""
        )
        return "--persistence-mode" in dropin

    def remove(self, command: str) -> tuple[bool, list[str]]:
        names = [w for w in shlex.split(command) if not w.startswith("-") and w not in REMOVE_WORDS]
        names = [n for n in names if not n.startswith("Dpkg::") and "=" not in n]
        if any(self.packages[n].held for n in names if n in self.packages) and (
            "--allow-change-held-packages" not in command
        ):
            return False, [HELD_ERROR]
        for name in names:
            self.packages.pop(name, None)
        return True, []

    def install(self, command: str) -> tuple[bool, list[str]]:
        words = [w for w in shlex.split(command) if not w.startswith("-")]
        requests = [w for w in words[words.index("install") + 1 :] if not w.startswith("Dpkg::")]
        plan: dict[str, str] = {}
        for request in requests:
            name, _, version = request.partition("=")
            if error := self.resolve(name, version or None, plan):
                return False, [error]
        changing = [n for n in plan if n in self.packages and self.packages[n].version != plan[n]]
        if any(self.packages[n].held for n in changing) and (
            "--allow-change-held-packages" not in command
        ):
            return False, [HELD_ERROR]
        for name, version in plan.items():
            held = self.packages[name].held if name in self.packages else False
            self.packages[name] = Package(version, held)
        return True, []

    def resolve(self, name: str, version: str | None, plan: dict[str, str]) -> str | None:
        if name in plan:
            return None
        offered = self.available(name)
        if version is None:
            if name in self.packages:
                plan[name] = self.packages[name].version
                return None
            version = self.candidate(name)
        if version is None or version not in offered:
            return f"E: Unable to locate package {name}" + (f"={version}" if version else "")
        plan[name] = version
        for dependency in offered[version]:
            dep_name, _, dep_version = dependency.partition("=")
            if error := self.resolve(dep_name, dep_version or None, plan):
                return error
        return None

    def reboot(self) -> None:
        """What a boot does: a new boot id, the installed driver's module, enabled services."""
        self.reboot_pending = False
        self.boots += 1
        self.boot_id = str(uuid.uuid4())
        blacklisted = any(
            "blacklist nouveau" in c for p, c in self.files.items() if "modprobe.d" in p
        )
        self.nouveau_loaded = self.nouveau_loaded and not blacklisted
        dkms = [n for n in self.packages if "dkms" in n]
        headers = f"linux-headers-{self.kernel}" in self.packages
        if dkms and headers and not (self.secure_boot and not self.enrolled_keys):
            self.loaded_driver = upstream(self.packages[dkms[0]].version)
        elif not self.driver_from_outside_apt:
            self.loaded_driver = None
        self.services_running = set(self.services_enabled) if self.loaded_driver else set()
        if not self.fabric_manager_starts():
            self.services_running.discard("nvidia-fabricmanager.service")
        wanted = self.files.get("/etc/systemd/system/multi-user.target.d/servekit-nvidia.conf", "")
        if self.loaded_driver and "nvidia-persistenced" in wanted:
            self.services_running.add("nvidia-persistenced.service")
        self.persistence_now = bool(
            "nvidia-persistenced.service" in self.services_running
            and self.persistenced_configured()
        )

    def upload(self, path: str, content: str) -> None:
        self.files[path] = content


HELD_ERROR = "E: Held packages were changed and -y was used without --allow-change-held-packages."
REMOVE_WORDS = {"DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "remove"}
BASE_DIRS = {
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences.d",
    "/etc/apt/apt.conf.d",
    "/etc/modprobe.d",
    "/etc/profile.d",
    "/etc/systemd/system",
    "/tmp",
    "/usr/local/lib",
}


# --- running the deploy against simulated hosts ---------------------------------------------------


@dataclass
class Step:
    """One operation on one host: its name and the commands it ran (none: it changed nothing)."""

    name: str
    commands: list[str]
    parallel: int | None = None

    def __str__(self) -> str:
        lines = [self.name] + [f"    {c}" for c in self.commands]
        return "\n".join(lines)


@dataclass
class Run:
    steps: list[Step]
    failed: bool

    @property
    def changed(self) -> list[Step]:
        return [s for s in self.steps if s.commands]

    def commands(self) -> list[str]:
        return [c for s in self.steps for c in s.commands]

    def step(self, fragment: str) -> Step:
        found = [s for s in self.steps if s.name.endswith(f"| {fragment}")]
        found = found or [s for s in self.steps if fragment in s.name]
        assert len(found) == 1, (fragment, [s.name for s in self.steps])
        return found[0]

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.changed)


def _command_text(command: Any, sim: SimHost) -> str:
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FunctionCommand):
        return f"<python: {command.function.__name__}>"
    if isinstance(command, FileUploadCommand):
        return f"<upload {command.dest}>"
    return repr(command)


def run_gpu_deploy(hosts: dict[str, SimHost], data: dict[str, dict[str, Any]]) -> dict[str, Run]:
    """Run servekit's GPU deploy on `@fake` hosts backed by simulated hosts; the steps per host."""
    from servekit.deploys.gpu import gpu_host

    names = list(hosts)
    inventory = Inventory(
        (
            [
                (f"@fake/{n}", {"fake_delay": 0, "fake_delay_jitter": 0, **data.get(n, {})})
                for n in names
            ],
            {},
        )
    )
    sims = {inventory.get_host(f"@fake/{n}"): hosts[n] for n in names}
    for pyinfra_host, sim in sims.items():
        _attach(pyinfra_host, sim)
    state = State(inventory=inventory, config=Config(TEMP_DIR="/tmp", PARALLEL=len(names)))
    connect_all(state)
    add_deploy(state, gpu_host)
    try:
        run_ops(state)
    except PyinfraError as error:  # every host failed: the CLI exits 1 with this
        assert str(error) == "No hosts remaining!"
    runs = {}
    for pyinfra_host, sim in sims.items():
        steps = []
        for op_hash in state.get_op_order():
            if op_hash not in state.ops[pyinfra_host]:
                continue
            meta = state.get_op_meta(op_hash)
            op = state.get_op_data_for_host(pyinfra_host, op_hash).operation_meta
            commands = [_command_text(c, sim) for c in (op._commands or [])]
            parallel = meta.global_arguments.get("_parallel")
            steps.append(Step(sorted(meta.names)[0], commands, parallel))
        runs[pyinfra_host.name.removeprefix("@fake/")] = Run(
            steps, pyinfra_host in state.failed_hosts
        )
    disconnect_all(state)
    return runs


def _attach(pyinfra_host: Any, sim: SimHost) -> None:
    """Route the fake connector's commands, uploads and reconnections to the simulated host."""

    def lookup(command: str) -> tuple[bool, CommandOutput]:
        success, lines = sim.respond(command)
        buffer = "stdout" if success else "stderr"
        return success, CommandOutput([OutputLine(buffer, line) for line in lines])

    def put_file(
        filename_or_io: str | IOBase, remote_filename: str, *args: Any, **kwargs: Any
    ) -> bool:
        if isinstance(filename_or_io, str):
            with open(filename_or_io) as file:
                content = file.read()
        else:
            filename_or_io.seek(0)
            data = filename_or_io.read()
            content = data.decode() if isinstance(data, bytes) else str(data)
        sim.upload(remote_filename, content)
        return True

    original_init = pyinfra_host.init

    def init(state: State) -> None:
        original_init(state)
        connector = pyinfra_host.connector
        connector._lookup_response = lookup
        original_run = connector.run_shell_command

        def run_shell_command(command: Any, **arguments: Any) -> Any:
            sim.stdin = arguments.get("_stdin")
            try:
                return original_run(command, **arguments)
            finally:
                sim.stdin = None

        connector.run_shell_command = run_shell_command
        connector.put_file = put_file
        original_connect = connector.connect

        def connect() -> None:
            if sim.reboot_pending:
                sim.reboot()
            original_connect()

        connector.connect = connect

    pyinfra_host.init = init
