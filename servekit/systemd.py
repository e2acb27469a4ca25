"""systemd for servekit's units: quoting for values that come from a plan, and the ONE hardening
definition every unit servekit writes carries (rendered by templates/_hardening.j2) and the GPU
verification reuses as `systemd-run -p KEY=VALUE` properties, so the check runs in the engines'
sandbox.

Quoting follows systemd.syntax(7) and systemd.service(5): a value is one double-quoted word, in
which `\\` and `"` are escaped and control characters written as C escapes (`\\xNN`, which
Environment= and ExecStart= unescape); `%` is doubled because specifiers are expanded in these
settings; in ExecStart= `$` is doubled too (`$VAR` is expanded there, `$$` is a literal `$`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

UnitKind = Literal["engine", "ollama", "firewall", "metrics"]
Setting = tuple[str, str]


class SystemdValueError(ValueError):
    """A value that has no safe spelling in a unit file (it never comes from a checked plan)."""


def _escape(value: str) -> str:
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif char == "%":
            out.append("%%")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def quote(value: str) -> str:
    """One word for a unit file setting that unescapes C escapes (Environment=, ExecStart=):
    double-quoted, `\\` and `"` escaped, control characters as `\\xNN`, `%` doubled."""
    return f'"{_escape(value)}"'


def word(value: str) -> str:
    """`quote()`, or the value bare (`%` doubled) where it has nothing a unit file's word
    splitting would read: no whitespace, quote, backslash or control character, not empty."""
    special = any(c.isspace() or c in "\"'\\" or not 0x20 <= ord(c) != 0x7F for c in value)
    return quote(value) if special or value in ("", ";") else value.replace("%", "%%")


def environment(key: str, value: str, quoted: bool = False) -> str:
    """An `Environment=` value: one `KEY=VALUE` word (systemd.exec(5)), bare where it holds
    nothing word splitting reads, else quoted; `quoted` always quotes it."""
    if not key.isascii() or not key.replace("_", "a").isalnum() or key[0].isdigit():
        raise SystemdValueError(f"{key!r} is not an environment variable name")
    return quote(f"{key}={value}") if quoted else word(f"{key}={value}")


def environment_lines(env: Mapping[str, str]) -> list[str]:
    """`Environment=` values for a drop-in, one quoted assignment each, in a stable order."""
    return [environment(key, value, quoted=True) for key, value in sorted(env.items())]


def exec_argv(argv: Sequence[str]) -> str:
    """An `ExecStart=`/`ExecStop=` command line: the absolute executable, then each argument
    quoted, `$` doubled (systemd.service(5): `$$` is a literal dollar sign). A lone `;` (the
    command separator) becomes `\\;`. The executable must be absolute, so that no prefix
    character (`-`, `+`, `!`, `@`, `:`) can be read from it."""
    if not argv or not argv[0].startswith("/"):
        raise SystemdValueError(f"{argv[:1]!r}: the executable must be an absolute path")
    words = []
    for arg in argv:
        words.append("\\;" if arg == ";" else word(arg).replace("$", "$$"))
    return " ".join(words)


def path(value: str) -> str:
    """A path for ReadWritePaths=/WorkingDirectory=/EnvironmentFile=: absolute, no control
    characters (these settings do not unescape C escapes), quoted, `%` doubled."""
    if not value.startswith("/"):
        raise SystemdValueError(f"{value!r} is not an absolute path")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise SystemdValueError(f"{value!r} holds a control character")
    return quote(value)


def bare_path(value: str) -> str:
    """A path for a setting that takes exactly one unquoted path (WorkingDirectory=,
    EnvironmentFile=): absolute, no whitespace, quotes or control characters, `%` doubled."""
    if not value.startswith("/") or any(c.isspace() or c in "\"'\\" for c in value):
        raise SystemdValueError(f"{value!r} is not a plain absolute path")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise SystemdValueError(f"{value!r} holds a control character")
    return value.replace("%", "%%")


def name(value: str) -> str:
    """A user, group or unit name: letters, digits, `-`, `_`, `.`, `@` only."""
    if not value or not all(c.isascii() and (c.isalnum() or c in "-_.@") for c in value):
        raise SystemdValueError(f"{value!r} is not a plain name")
    return value


# --- GPU and network devices -----------------------------------------------------------------

# Character device groups (names in /proc/devices) CUDA opens. systemd matches `char-GROUP`
# against /proc/devices ("a device group name, as listed in /proc/devices", glob rules):
# systemd.resource-control(5), DeviceAllow=. Names from NVIDIA/open-gpu-kernel-modules:
# - 545 and later: kernel-open/nvidia/nv.c nvidia_init_module() registers major 195
#   (kernel-open/common/inc/nv-chardev-numbers.h) as "nvidia" (the GPUs, minors 0..254) and
#   "nvidiactl" (minor 255) with nv_register_chrdev() (checked at tags 545.23.06, 550.40.07,
#   550.163.01, 580.95.05);
# - 535 and earlier: kernel-open/nvidia/nv-frontend.c registers major 195 as "nvidia-frontend"
#   (tag 535.288.01), with no "nvidia" or "nvidiactl" group;
# - every branch: kernel-open/nvidia-uvm/uvm.c NVIDIA_UVM_DEVICE_NAME "nvidia-uvm",
#   kernel-open/nvidia/nv-caps.c "nvidia-caps" (MIG capabilities), kernel-open/nvidia/
#   linux_nvswitch.c NVSWITCH_DRIVER_NAME "nvidia-nvswitch" (export_nvswitch.h), and on newer
#   branches kernel-open/nvidia/nv-caps-imex.c "nvidia-caps-imex-channels" (580.95.05).
NVIDIA_GROUPS = (
    "nvidia",
    "nvidiactl",
    "nvidia-frontend",
    "nvidia-uvm",
    "nvidia-caps",
    "nvidia-nvswitch",
    "nvidia-caps-imex-channels",
)
# InfiniBand / EFA verbs (/dev/infiniband/uverbsN): Linux drivers/infiniband/core/uverbs_main.c
# ib_uverbs_init() registers its fixed and dynamic regions as "infiniband_verbs". The RDMA
# connection manager is a misc device (drivers/infiniband/core/ucma.c, node infiniband/rdma_cm),
# allowed by path rather than the whole `misc` group.
INFINIBAND_GROUPS = ("infiniband_verbs",)
RDMA_CM = "/dev/infiniband/rdma_cm"
# What `servekit render` (no host) shows: the groups of old and new branches together.
DEFAULT_GPU_GROUPS = NVIDIA_GROUPS


def device_groups(char_devices: Iterable[str] | None) -> list[str]:
    """The GPU/RDMA groups to allow, from the host's character device groups (the CharDevices
    fact: names in /proc/devices); None (not gathered) gives the default set of all branches."""
    if char_devices is None:
        return list(DEFAULT_GPU_GROUPS)
    present = set(char_devices)
    return [g for g in (*NVIDIA_GROUPS, *INFINIBAND_GROUPS) if g in present]


def device_allow(groups: Iterable[str]) -> list[str]:
    """`DeviceAllow=` values for these groups (read and write, no mknod)."""
    allow = []
    for group in groups:
        allow.append(f"char-{name(group)} rw")
        if group in INFINIBAND_GROUPS:
            allow.append(f"{RDMA_CM} rw")
    return allow


# --- the hardening definition ----------------------------------------------------------------

# Shared by every unit. Scored with `systemd-analyze security --offline=yes` (systemd 252).
COMMON: tuple[Setting, ...] = (
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("RemoveIPC", "yes"),
    ("SystemCallArchitectures", "native"),
    # @system-service includes @resources (mbind, set_mempolicy, sched_setaffinity, setrlimit):
    # NCCL pins its threads to the GPU's NUMA node and CUDA binds pinned host memory, so the
    # engines keep it (as NixOS's services.ollama does); the firewall loader drops it.
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged"),
    ("SystemCallErrorNumber", "EPERM"),
    ("UMask", "0077"),
    ("KeyringMode", "private"),
    ("DevicePolicy", "closed"),
)


def _with(base: tuple[Setting, ...], *changes: Setting) -> tuple[Setting, ...]:
    """`base` with the keys of `changes` replaced (in the place of their first occurrence; all
    occurrences of a repeated key go) and new keys appended."""
    keys = {key for key, _ in changes}
    out: list[Setting] = []
    placed = False
    for key, value in base:
        if key not in keys:
            out.append((key, value))
        elif not placed:
            out.extend(changes)
            placed = True
    return tuple(out) if placed else (*out, *changes)


# vLLM and Ray: CUDA and PyTorch (and Triton's JIT) map memory writable and executable, so no
# MemoryDenyWriteExecute. ProcSubset stays `all`: the driver publishes /proc/driver/nvidia/
# (params, gpus/, and capabilities/ for MIG: open-gpu-kernel-modules kernel-open/nvidia/
# nv-procfs.c nv_procfs_init(), nv.c nv_caps_root_init()), which ProcSubset=pid hides.
# AF_NETLINK: glibc's getifaddrs() (NCCL's and Gloo's interface discovery, Ray's psutil
# net_if_addrs) opens socket(PF_NETLINK, SOCK_RAW, NETLINK_ROUTE) (glibc
# sysdeps/unix/sysv/linux/ifaddrs.c __netlink_open). No PrivateUsers: the GPUs' device nodes
# and pinned memory (LimitMEMLOCK) stay the host's, not a user namespace's; no PrivateDevices
# (it would hide /dev/nvidia*): DevicePolicy=closed with DeviceAllow= per host instead.
ENGINE: tuple[Setting, ...] = (
    *COMMON,
    ("ProcSubset", "all"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"),
    ("LimitNOFILE", "1048576"),
    ("LimitMEMLOCK", "infinity"),
)

# Ollama (NixOS's services.ollama hardening): its runners keep MemoryDenyWriteExecute and
# PrivateUsers, and reach AMD/Vulkan/WSL GPUs besides NVIDIA's.
OLLAMA: tuple[Setting, ...] = (
    *COMMON,
    ("PrivateUsers", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("ProcSubset", "all"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
)
# AMD (ROCm) and Vulkan render nodes, and WSL's paravirtual GPU: as NixOS's module allows.
OLLAMA_OTHER_DEVICES = ("char-drm rw", "char-fb rw", "char-kfd rw", "/dev/dxg rw")

# The firewall loader runs `nft` as root: it needs CAP_NET_ADMIN and a netlink socket to the
# kernel's nftables, and nothing else.
FIREWALL: tuple[Setting, ...] = (
    *_with(
        _with(COMMON, ("CapabilityBoundingSet", "CAP_NET_ADMIN")),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallFilter", "~@privileged @resources"),
    ),
    ("MemoryDenyWriteExecute", "yes"),
    ("ProcSubset", "pid"),
    ("RestrictAddressFamilies", "AF_NETLINK AF_UNIX"),
    # nft talks to the kernel over netlink only: no IP traffic at all.
    ("IPAddressDeny", "any"),
)

# mtail for the gateway's per-key metrics (servekit/gateway/keymetrics.py): a Go binary that
# reads one log file and answers HTTP on loopback only; it writes nothing.
METRICS: tuple[Setting, ...] = (
    *COMMON,
    ("MemoryDenyWriteExecute", "yes"),
    ("PrivateDevices", "yes"),
    ("ProcSubset", "pid"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("IPAddressDeny", "any"),
    ("IPAddressAllow", "localhost"),
)


@dataclass(frozen=True)
class Sandbox:
    """The [Service] hardening of one unit: the shared settings, writable paths, devices."""

    kind: UnitKind
    writable: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()  # DeviceAllow= values
    protect_home: str = "yes"
    note: str = ""  # a comment for the unit file (where the devices come from)

    def settings(self) -> list[Setting]:
        base = {"engine": ENGINE, "ollama": OLLAMA, "firewall": FIREWALL, "metrics": METRICS}[
            self.kind
        ]
        out = [(key, self.protect_home if key == "ProtectHome" else value) for key, value in base]
        if self.writable:
            out.append(("ReadWritePaths", " ".join(path(p) for p in self.writable)))
        out += [("DeviceAllow", device) for device in self.devices]
        return out

    def lines(self) -> list[str]:
        """`KEY=VALUE` lines for a unit file's [Service] section."""
        return [f"{key}={value}" for key, value in self.settings()]

    def run_properties(self) -> list[str]:
        """`systemd-run` arguments (`-p KEY=VALUE` each) for a transient unit in this sandbox."""
        args = []
        for key, value in self.settings():
            args += ["-p", f"{key}={value}"]
        return args


DEFAULT_DEVICES_NOTE = (
    "No host read: DeviceAllow= lists the GPU groups of every NVIDIA driver branch (535: "
    "nvidia-frontend; 545 on: nvidia, nvidiactl); a deploy allows what /proc/devices lists."
)


def devices_note(char_devices: Iterable[str] | None) -> str:
    return DEFAULT_DEVICES_NOTE if char_devices is None else ""


def engine_sandbox(
    writable: Iterable[str], device_groups_: Iterable[str], note: str = ""
) -> Sandbox:
    """vLLM's and Ray's sandbox: the engine settings, its home writable, the GPU devices."""
    return Sandbox("engine", tuple(writable), tuple(device_allow(device_groups_)), note=note)


def ollama_sandbox(
    writable: Iterable[str],
    device_groups_: Iterable[str],
    protect_home: str = "yes",
    note: str = "",
) -> Sandbox:
    """Ollama's sandbox: NVIDIA's devices like the engines, and AMD/Vulkan/WSL GPUs."""
    devices = (*device_allow(device_groups_), *OLLAMA_OTHER_DEVICES)
    return Sandbox("ollama", tuple(writable), devices, protect_home, note)


def firewall_sandbox(writable: Iterable[str] = ()) -> Sandbox:
    """The firewall loader's sandbox: nft with CAP_NET_ADMIN over netlink, no devices (the
    rollback also writes the rules file back: `writable`)."""
    return Sandbox("firewall", tuple(writable))


def metrics_sandbox() -> Sandbox:
    """The gateway metrics' sandbox (mtail): loopback only, nothing writable."""
    return Sandbox("metrics")


def systemd_run(sandbox: Sandbox) -> list[str]:
    """`systemd-run` argv (the command to run follows) for a transient service in `sandbox`,
    as an unprivileged dynamic user like the engines' own account: waits for it and passes its
    output and exit status through (systemd-run(1): --wait, --pipe, --collect, --quiet)."""
    return [
        "systemd-run",
        "--wait",
        "--pipe",
        "--collect",
        "--quiet",
        "-p",
        "DynamicUser=yes",
        *sandbox.run_properties(),
    ]


def gpu_check_sandbox(char_devices: Iterable[str] | None) -> Sandbox:
    """The engines' sandbox for the GPU check: the same settings and devices, nothing writable
    (vLLM's home may not exist yet when the GPU deploy runs)."""
    return engine_sandbox((), device_groups(char_devices))
