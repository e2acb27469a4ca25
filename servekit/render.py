"""Render the files a host gets (engine configs, environment files, systemd units) from its plan.

One rendering path for both consumers: the deploys upload these files, and `servekit render`
writes them to a folder for review (secrets replaced by placeholders, facts not yet gathered
shown as placeholders too).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from servekit import ollama, systemd
from servekit.firewall import FIREWALL_RULES as FIREWALL_RULES  # where the firewall lives
from servekit.firewall import FIREWALL_UNIT as FIREWALL_UNIT
from servekit.firewall import NFT as NFT
from servekit.firewall import firewall_files as firewall_files
from servekit.firewall import firewall_rules as firewall_rules
from servekit.firewall import needs_firewall, ollama_port
from servekit.hostfacts import HostFacts as HostFacts
from servekit.hostplan import HostPlan, SecretSource, uses_ray

# Ray's ports live in servekit.spec next to RAY_PORT (placement claims them); re-exported here.
from servekit.spec import RAY_FIXED_PORTS as RAY_FIXED_PORTS
from servekit.spec import RAY_WORKER_PORTS as RAY_WORKER_PORTS
from servekit.templating import RenderedFile as RenderedFile
from servekit.templating import render_template as render_template
from servekit.templating import templates_dir as templates_dir
from servekit.vllm_files import SecretResolver, ray_files, vllm_files
from servekit.vllm_files import engine_sandbox as engine_sandbox
from servekit.vllm_files import ray_args as ray_args
from servekit.vllm_files import vllm_paths as vllm_paths
from servekit.vllm_layout import LAYOUT

VLLM_USER = LAYOUT.user
"""The account vLLM and Ray run as (the layout's; kept here for the deploys that import it)."""


def placeholder(source: SecretSource) -> str:
    return f"<secret from {source.describe()}>"


def ollama_files(plan: HostPlan, facts: HostFacts) -> list[RenderedFile]:
    """Ollama's service files: on Linux our unit and its settings drop-in, on macOS the
    LaunchAgent plist (with `~` resolved to the user's home from the facts)."""
    settings = plan.ollama
    if settings is None:
        return []
    if plan.os == "macos":
        home = facts.home or ollama.HOME_PLACEHOLDER
        layout = ollama.MacLayout(home, settings.version)
        env = {key: ollama.expand_home(value, home) for key, value in settings.env.items()}
        plist = render_template(
            "ollama.plist.j2",
            label=ollama.LAUNCHD_LABEL,
            binary=layout.binary,
            environment=dict(sorted(env.items())),
            home=home,
            log=layout.log,
        )
        owner = home.rstrip("/").rsplit("/", 1)[-1]
        return [RenderedFile(layout.plist, plist, "0644", owner, "staff")]
    models = settings.env.get("OLLAMA_MODELS", f"{ollama.SERVICE_HOME}/models")
    writable = [ollama.SERVICE_HOME]
    if not models.startswith(ollama.SERVICE_HOME + "/"):
        writable.append(models)
    homes = ("/home/", "/root/", "/run/user/")
    unit = render_template(
        "ollama.service.j2",
        unit=ollama.UNIT,
        dropin=ollama.DROPIN_FILE,
        fleet=plan.fleet,
        user=ollama.SERVICE_USER,
        home=ollama.SERVICE_HOME,
        exec_start=[ollama.LINUX_BINARY, "serve"],
        sandbox=systemd.ollama_sandbox(
            writable,
            facts.gpu_device_groups(),
            # Models kept under a home directory need it visible (and writable) to the service.
            protect_home="no" if any(f"{p}/".startswith(homes) for p in writable) else "yes",
            note=systemd.devices_note(facts.char_devices),
        ),
        firewall=ollama_port(plan) is not None,
    )
    dropin = render_template(
        "ollama-settings.conf.j2",
        fleet=plan.fleet,
        version=settings.version,
        environment=ollama.environment_lines(settings.env),
    )
    return [
        RenderedFile(ollama.UNIT_FILE, unit, "0644"),
        RenderedFile(ollama.DROPIN_FILE, dropin, "0644"),
    ]


@dataclass(frozen=True)
class GpuFilePaths:
    """Where the GPU deploy writes its files."""

    sources: str = "/etc/apt/sources.list.d/servekit-nvidia-cuda.sources"
    preferences: str = "/etc/apt/preferences.d/servekit-nvidia-cuda"
    nouveau: str = "/etc/modprobe.d/servekit-blacklist-nouveau.conf"
    unattended_upgrades: str = "/etc/apt/apt.conf.d/51servekit-nvidia"
    persistenced: str = "/etc/systemd/system/nvidia-persistenced.service.d/servekit.conf"
    persistenced_wanted: str = "/etc/systemd/system/multi-user.target.d/servekit-nvidia.conf"
    cuda_profile: str = "/etc/profile.d/servekit-cuda.sh"


GPU_PATHS = GpuFilePaths()

# Package names unattended-upgrades must leave alone (Python regular expressions, matched at the
# start of the name): NVIDIA's driver, Canonical's builds of it, Fabric Manager, CUDA, DCGM.
UNATTENDED_UPGRADES_BLACKLIST = (
    "nvidia-",
    "libnvidia-",
    "cuda-",
    "libcuda",
    "libnvcuvid",
    "libnvoptix",
    "xserver-xorg-video-nvidia",
    "libxnvctrl",
    "firmware-nvidia",
    "linux-(modules|objects|signatures)-nvidia-",
    "datacenter-gpu-manager",
)


def gpu_files(
    repository_url: str, keyring: str, cuda_toolkit: str | None, systemd: bool = True
) -> list[RenderedFile]:
    """The files of a GPU host: NVIDIA's repository, nouveau, holds, persistence, CUDA's PATH."""
    paths = GPU_PATHS
    files = [
        RenderedFile(
            paths.sources,
            render_template("nvidia-cuda.sources.j2", url=repository_url, keyring=keyring),
        ),
        RenderedFile(paths.preferences, render_template("nvidia-cuda.pref.j2")),
        RenderedFile(paths.nouveau, render_template("blacklist-nouveau.conf.j2")),
        RenderedFile(
            paths.unattended_upgrades,
            render_template(
                "nvidia-unattended-upgrades.conf.j2", patterns=UNATTENDED_UPGRADES_BLACKLIST
            ),
        ),
    ]
    if systemd:
        files += [
            RenderedFile(paths.persistenced, render_template("nvidia-persistenced.conf.j2")),
            RenderedFile(
                paths.persistenced_wanted, render_template("nvidia-persistenced-wanted.conf.j2")
            ),
        ]
    if cuda_toolkit:
        files.append(
            RenderedFile(
                paths.cuda_profile, render_template("cuda-profile.sh.j2", version=cuda_toolkit)
            )
        )
    return files


def render_host(
    plan: HostPlan, secret: SecretResolver = placeholder, facts: HostFacts | None = None
) -> list[RenderedFile]:
    """Every file servekit writes on this host, in a stable order."""
    facts = facts or HostFacts()
    files: list[RenderedFile] = []
    if "gpu" in plan.roles:
        repository = facts.nvidia_repository or "<NVIDIA repository for the host's release>"
        keyring = "/usr/share/keyrings/cuda-archive-keyring.gpg"
        files += gpu_files(repository, keyring, plan.gpu_setup.cuda_toolkit)
    for instance in plan.vllm:
        if instance.role != "ray-worker":
            files += vllm_files(plan, instance, secret, facts)
        if uses_ray(instance):
            files += ray_files(plan, instance, facts)
    if needs_firewall(plan):
        files += firewall_files(plan)
    files += ollama_files(plan, facts)
    return files


class UnsafeOutput(ValueError):
    """`servekit render` would write outside OUTDIR (a symlink in the way, a `..` in a path)."""


def _open_dir(parent: int, name: str, shown: Path) -> int:
    """Open (making it if missing) the directory `name` under the open directory `parent`,
    never following a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as error:
        if os.path.islink(shown) or error.errno == errno.ELOOP:
            raise UnsafeOutput(
                f"refusing to write through the symlink {shown}: remove it, or render into an "
                "empty folder"
            ) from None
        if error.errno == errno.ENOTDIR:
            raise UnsafeOutput(f"{shown} is a file where a folder is needed: remove it") from None
        raise


def write_tree(files: list[RenderedFile], root: Path) -> list[Path]:
    """Write rendered files under `root` (mirroring their absolute paths) for review.

    Nothing below `root` is followed if it is a symlink (each folder is opened with O_NOFOLLOW
    relative to the one above, and a file is written to a new name, then renamed over): a link
    planted in OUTDIR cannot make `render` write anywhere else. Such a link is refused.
    """
    written = []
    root.mkdir(parents=True, exist_ok=True)
    for rendered in files:
        parts = rendered.path.strip("/").split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise UnsafeOutput(f"{rendered.path!r} is not a normalised absolute path")
        target = root.joinpath(*parts)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            shown = root
            for part in parts[:-1]:
                shown = shown / part
                inner = _open_dir(fd, part, shown)
                os.close(fd)
                fd = inner
            _write_file(fd, parts[-1], rendered, target)
        finally:
            os.close(fd)
        written.append(target)
    return written


def _write_file(directory: int, name: str, rendered: RenderedFile, shown: Path) -> None:
    """Write `name` in the open `directory`: a new file, then renamed over the old entry."""
    try:
        current = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        current = None
    if current is not None and stat.S_ISLNK(current.st_mode):
        raise UnsafeOutput(
            f"refusing to write through the symlink {shown}: remove it, or render into an "
            "empty folder"
        )
    temp = f".{name}.servekit-new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=directory)
    mode = int(rendered.mode, 8)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(temp, flags, 0o600, dir_fd=directory)
    try:
        data = memoryview(rendered.content.encode("utf-8"))
        while data:
            data = data[os.write(fd, data) :]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
