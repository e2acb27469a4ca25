"""Render the files a host gets (engine configs, environment files, systemd units) from its plan.

One rendering path for both consumers: the deploys upload these files, and `servekit render`
writes them to a folder for review (secrets replaced by placeholders, facts not yet gathered
shown as placeholders too).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

from servekit.firewall import FIREWALL_RULES as FIREWALL_RULES  # where the firewall lives
from servekit.firewall import FIREWALL_UNIT as FIREWALL_UNIT
from servekit.firewall import NFT as NFT
from servekit.firewall import firewall_files as firewall_files
from servekit.firewall import firewall_rules as firewall_rules
from servekit.firewall import needs_firewall
from servekit.hostfacts import HostFacts as HostFacts
from servekit.hostplan import HostPlan, SecretSource, uses_ray
from servekit.monitoring import monitoring_files
from servekit.monitoring.grafana import grafana_files
from servekit.nvidia import GPU_PATHS as GPU_PATHS  # the GPU host's files live with NVIDIA's policy
from servekit.nvidia import UNATTENDED_UPGRADES_BLACKLIST as UNATTENDED_UPGRADES_BLACKLIST
from servekit.nvidia import GpuFilePaths as GpuFilePaths
from servekit.nvidia import gpu_files as gpu_files
from servekit.ollama.files import ollama_files as ollama_files  # Ollama's files live with Ollama

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


def placeholder(source: SecretSource) -> str:
    return f"<secret from {source.describe()}>"


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


REVIEW_WEBHOOK = "https://servekit-placeholder.invalid/alert-webhook"
"""A URL Alertmanager's file is rendered with for review, then replaced by the placeholder:
the webhook's secret is never read (`.invalid` never resolves, RFC 2606)."""


def monitoring_review_files(plan: HostPlan) -> list[RenderedFile]:
    """The monitoring host's files for review: Prometheus, the rules, Alertmanager (its webhook
    shown as a placeholder) and, when declared, Grafana's (its admin password and repository
    key shown as placeholders). Nothing is read: no secret, no key file."""
    monitoring = plan.monitoring
    if monitoring is None:
        return []
    hook = monitoring.alert_webhook
    files = monitoring_files(plan, None if hook is None else REVIEW_WEBHOOK)
    if hook is not None:
        sentinel, shown = json.dumps(REVIEW_WEBHOOK), json.dumps(placeholder(hook))
        files = [replace(f, content=f.content.replace(sentinel, shown)) for f in files]
    if monitoring.grafana is not None:
        key = f"<OpenPGP key from {monitoring.grafana.signing_key}>\n"
        files += grafana_files(plan, placeholder(monitoring.grafana.admin_password), key)
    return files


def review_files(plan: HostPlan) -> tuple[list[RenderedFile], list[str]]:
    """What `servekit render` shows for a host: every file the deploys write there, secrets and
    facts not yet gathered as placeholders; and notes on what cannot be rendered yet (scrape
    targets on cloud hosts before `servekit cloud apply` gives them addresses)."""
    files = render_host(plan)
    try:
        files += monitoring_review_files(plan)
    except ValueError as error:
        return files, [f"monitoring files not rendered: {error}"]
    return files, []


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
