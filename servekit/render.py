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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from servekit import systemd
from servekit.firewall import FIREWALL_RULES as FIREWALL_RULES  # where the firewall lives
from servekit.firewall import FIREWALL_UNIT as FIREWALL_UNIT
from servekit.firewall import NFT as NFT
from servekit.firewall import firewall_files as firewall_files
from servekit.firewall import firewall_rules as firewall_rules
from servekit.firewall import needs_firewall
from servekit.hostplan import (
    VLLM_CONFIG_DIR,
    VLLM_HOME,
    VLLM_VENVS,
    HostPlan,
    SecretSource,
    VllmInstance,
    ray_unit,
    uses_ray,
    vllm_instance_name,
)
from servekit.nvidia import GPU_PATHS as GPU_PATHS  # the GPU host's files live with NVIDIA's policy
from servekit.nvidia import UNATTENDED_UPGRADES_BLACKLIST as UNATTENDED_UPGRADES_BLACKLIST
from servekit.nvidia import GpuFilePaths as GpuFilePaths
from servekit.nvidia import gpu_files as gpu_files
from servekit.ollama.files import ollama_files as ollama_files  # Ollama's files live with Ollama

# Ray's ports live in servekit.spec next to RAY_PORT (placement claims them); re-exported here.
from servekit.spec import RAY_FIXED_PORTS as RAY_FIXED_PORTS
from servekit.spec import RAY_PORT
from servekit.spec import RAY_WORKER_PORTS as RAY_WORKER_PORTS
from servekit.templating import RenderedFile as RenderedFile
from servekit.templating import render_template as render_template
from servekit.templating import templates_dir as templates_dir

VLLM_USER = "vllm"
"""The account vLLM and Ray run as (the vLLM deploy creates it)."""
RAY_TEMP_DIR = f"{VLLM_HOME}/ray"

SecretResolver = Callable[[SecretSource], str]


@dataclass(frozen=True)
class HostFacts:
    """What rendering needs from the host itself; unknown values render as placeholders."""

    interfaces: dict[str, str] = field(default_factory=dict)  # address -> interface name
    home: str | None = None  # the login user's home (macOS: Ollama lives there)
    nvidia_repository: str | None = None  # NVIDIA's repository URL for the host's release
    # Character device groups of /proc/devices (facts/devices.py); None: not gathered, and the
    # units allow the GPU groups of every driver branch (systemd.DEFAULT_GPU_GROUPS).
    char_devices: tuple[str, ...] | None = None

    def gpu_device_groups(self) -> list[str]:
        """The GPU/RDMA device groups the engine units allow on this host."""
        return systemd.device_groups(self.char_devices)


def placeholder(source: SecretSource) -> str:
    return f"<secret from {source.describe()}>"


def engine_sandbox(facts: HostFacts) -> systemd.Sandbox:
    """The sandbox of vLLM and Ray processes (and of the GPU check that proves it): vLLM's home
    writable, the GPU devices this host's driver registers."""
    return systemd.engine_sandbox(
        [VLLM_HOME], facts.gpu_device_groups(), systemd.devices_note(facts.char_devices)
    )


def vllm_paths(plan: HostPlan, instance: VllmInstance) -> dict[str, str]:
    name = vllm_instance_name(instance)
    return {
        "config_file": f"{VLLM_CONFIG_DIR}/{name}.yaml",
        "env_file": f"{VLLM_CONFIG_DIR}/{name}.env",
        "unit_file": f"/etc/systemd/system/{instance.unit}.service",
        "ray_unit_file": f"/etc/systemd/system/{ray_unit(instance)}.service",
        "venv": f"{VLLM_VENVS}/{plan.versions.vllm}",
    }


def _cluster_env(instance: VllmInstance, plan: HostPlan, facts: HostFacts) -> dict[str, str]:
    """Interface variables NCCL and Gloo need on a multi-node replica (from the host's facts),
    and where a Ray-backed process finds its cluster."""
    if instance.nnodes < 2:
        return {}
    address = plan.cluster_address or ""
    interface = facts.interfaces.get(address, f"<interface holding {address or plan.name}>")
    env = {"NCCL_SOCKET_IFNAME": interface, "GLOO_SOCKET_IFNAME": interface}
    if uses_ray(instance):
        env["RAY_ADDRESS"] = f"{instance.head_address}:{RAY_PORT}"
        if plan.cluster_address:
            env["RAY_NODE_IP_ADDRESS"] = plan.cluster_address
            env["RAY_OVERRIDE_NODE_IP_ADDRESS"] = plan.cluster_address
    return env


def ray_args(instance: VllmInstance, plan: HostPlan) -> list[str]:
    """`ray start --block` arguments of this node: head or worker, its address, GPUs and ports."""
    args = (
        ["--head", f"--port={RAY_PORT}"]
        if instance.role == "server"
        else [f"--address={instance.head_address}:{RAY_PORT}"]
    )
    args += [
        f"--node-ip-address={plan.cluster_address}",
        f"--num-gpus={len(instance.gpu_indices)}",
        f"--temp-dir={RAY_TEMP_DIR}",
        "--disable-usage-stats",
    ]
    if instance.role == "server":
        args.append("--include-dashboard=false")
    args += [f"--{flag}={port}" for flag, port in RAY_FIXED_PORTS.items()]
    args += [f"--min-worker-port={RAY_WORKER_PORTS[0]}", f"--max-worker-port={RAY_WORKER_PORTS[1]}"]
    return args


def ray_files(plan: HostPlan, instance: VllmInstance, facts: HostFacts) -> list[RenderedFile]:
    """The Ray node unit of a Ray-backed replica on this host (head or worker)."""
    paths = vllm_paths(plan, instance)
    env = {**instance.env, **_cluster_env(instance, plan, facts), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("VLLM_ENGINE_READY_TIMEOUT_S", None)
    unit = render_template(
        "ray.service.j2",
        fleet=plan.fleet,
        unit=ray_unit(instance),
        ray_role="head" if instance.role == "server" else "worker",
        serve=instance.serve,
        replica=instance.replica,
        node_rank=instance.node_rank,
        nnodes=instance.nnodes,
        home=VLLM_HOME,
        user=VLLM_USER,
        env=env,
        exec_start=[f"{paths['venv']}/bin/ray", "start", "--block", *ray_args(instance, plan)],
        exec_stop=[f"{paths['venv']}/bin/ray", "stop", "--force"],
        sandbox=engine_sandbox(facts),
    )
    return [RenderedFile(paths["ray_unit_file"], unit, "0644")]


def vllm_files(
    plan: HostPlan, instance: VllmInstance, secret: SecretResolver, facts: HostFacts
) -> list[RenderedFile]:
    paths = vllm_paths(plan, instance)
    common = {
        "fleet": plan.fleet,
        "vllm_version": plan.versions.vllm,
        "unit": instance.unit,
    }
    config = render_template("vllm.yaml.j2", **common, config=instance.config, plan=instance.plan)
    env = render_template(
        "vllm.env.j2",
        **common,
        secrets={key: secret(source) for key, source in instance.secret_env.items()},
    )
    unit = render_template(
        "vllm.service.j2",
        **common,
        serve=instance.serve,
        role=instance.role,
        replica=instance.replica,
        node_rank=instance.node_rank,
        nnodes=instance.nnodes,
        checkpoint=instance.checkpoint,
        home=VLLM_HOME,
        user=VLLM_USER,
        env={**instance.env, **_cluster_env(instance, plan, facts)},
        env_file=paths["env_file"],
        exec_start=[f"{paths['venv']}/bin/vllm", "serve", "--config", paths["config_file"]],
        sandbox=engine_sandbox(facts),
        ready_timeout_s=instance.ready_timeout_s,
        after=[f"{ray_unit(instance)}.service"] if uses_ray(instance) else [],
    )
    return [
        RenderedFile(paths["config_file"], config, "0640", "root", "vllm"),
        RenderedFile(paths["env_file"], env, "0600"),
        RenderedFile(paths["unit_file"], unit, "0644"),
    ]


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
