"""The Debian 12 root filesystem every test host starts from, built once with debootstrap.

The cache is keyed by a hash of the recipe, so changing the recipe builds a new one. A build happens
in a temporary directory renamed into place at the end: a crash never leaves a cache that is reused.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import settings
from .fsutil import file_lock, remove_tree

PACKAGES = (
    # Asked for by the bench: systemd to boot, sshd to reach, python3 for pyinfra facts, sudo.
    "systemd",
    "systemd-sysv",
    "openssh-server",
    "dbus",
    "python3",
    "sudo",
    "ca-certificates",
    "iproute2",
    # What a bare Debian cloud image also has. Nothing the product's deploys install themselves
    # (python3-venv, nftables, zstd, ...) belongs here.
    "curl",
    "procps",
)

STALE_AFTER_S = 7 * 24 * 3600
PR_SET_PDEATHSIG = 1

CLOUD_USER = "debian"
"""The non-root sudo user a Debian cloud image comes with."""


def _setup_commands(mirror: str, security_mirror: str) -> tuple[str, ...]:
    """Commands run in the new root once: make it look like a freshly built cloud image."""
    sources = (
        f"Types: deb\\nURIs: {mirror}\\n"
        f"Suites: {settings.SUITE} {settings.SUITE}-updates\\nComponents: main\\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n\\n"
        f"Types: deb\\nURIs: {security_mirror}\\n"
        f"Suites: {settings.SUITE}-security\\nComponents: main\\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n"
    )
    return (
        "rm -f /etc/apt/sources.list",
        f"printf '{sources}' > /etc/apt/sources.list.d/debian.sources",
        "systemctl enable systemd-networkd",
        # Each host gets its own identity when it boots: machine-id and SSH host keys.
        ": > /etc/machine-id",
        "rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*",
        f"useradd --create-home --shell /bin/bash --groups sudo {CLOUD_USER}",
        f"echo '{CLOUD_USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-user",
        "chmod 0440 /etc/sudoers.d/90-cloud-user",
        # Like a fresh image: deploys must run `apt-get update` themselves.
        "apt-get clean",
        "rm -rf /var/lib/apt/lists/*",
    )


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the content of the root filesystem (and so its cache key)."""

    mirror: str
    security_mirror: str
    suite: str = settings.SUITE
    variant: str = "minbase"
    packages: tuple[str, ...] = PACKAGES
    setup: tuple[str, ...] = field(default=())

    def key(self) -> str:
        """A short hash of the recipe."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def machine_mirrors(sources_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The Debian archive and security URIs this machine's own apt sources use."""
    uris: dict[str, str] = {}
    for path in sorted(sources_dir.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            entries = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            for suite in entries.get("Suites", "").split():
                uris.setdefault(suite, entries.get("URIs", "").split()[0])
    legacy = sources_dir / "sources.list"
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and not words[1].startswith("["):
                uris.setdefault(words[2], words[1])
    mirror = uris.get(settings.SUITE, settings.DEFAULT_MIRROR).rstrip("/")
    security = uris.get(f"{settings.SUITE}-security", mirror + "-security").rstrip("/")
    return mirror, security


def default_recipe() -> Recipe:
    """The recipe for this machine: its own mirrors, the bench's package list."""
    mirror, security = machine_mirrors()
    return Recipe(mirror=mirror, security_mirror=security, setup=_setup_commands(mirror, security))


def _die_with_parent() -> None:
    """Have the child (before exec) killed when the building process dies.

    Otherwise an orphaned debootstrap would keep writing into the staging directory that the next
    build removes.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _build(recipe: Recipe, target: Path) -> None:
    subprocess.run(
        [
            "debootstrap",
            f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(target),
            recipe.mirror,
        ],
        check=True,
        capture_output=True,
        text=True,
        preexec_fn=_die_with_parent,
    )
    for command in recipe.setup:
        subprocess.run(
            ["chroot", str(target), "sh", "-ec", command],
            check=True,
            capture_output=True,
            text=True,
            preexec_fn=_die_with_parent,
        )


def cache_path(recipe: Recipe, cache_dir: Path = settings.CACHE_DIR) -> Path:
    """Where the root filesystem for `recipe` is (or will be) cached."""
    return cache_dir / f"rootfs-{recipe.key()}"


def ensure_rootfs(recipe: Recipe, cache_dir: Path = settings.CACHE_DIR) -> Path:
    """Return the cached root filesystem for `recipe`, building it first if needed.

    Concurrent callers wait on a lock; only one builds. Caches of other recipes unused for
    `STALE_AFTER_S` are removed (other worktrees may still use a recent one).
    """
    final = cache_path(recipe, cache_dir)
    with file_lock(cache_dir / "build.lock"):
        _prune(cache_dir, keep=final)
        if final.is_dir():
            os.utime(final)
            return final
        for leftover in cache_dir.glob("building-*"):
            remove_tree(leftover)
        staging = cache_dir / f"building-{recipe.key()}-{os.getpid()}"
        started = time.monotonic()
        try:
            _build(recipe, staging)
            (staging / ".servekit-recipe.json").write_text(json.dumps(asdict(recipe), indent=1))
            os.rename(staging, final)
        except subprocess.CalledProcessError as error:
            remove_tree(staging)
            raise RuntimeError(
                f"building the test host root filesystem failed: {error.cmd}\n"
                f"{error.stdout or ''}{error.stderr or ''}"
            ) from error
        except BaseException:
            remove_tree(staging)
            raise
        (final / ".servekit-build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    return final


def _prune(cache_dir: Path, keep: Path) -> None:
    mounted = Path("/proc/self/mountinfo").read_text()
    for other in cache_dir.glob("rootfs-*"):
        unused_for = time.time() - other.stat().st_mtime
        if other != keep and unused_for > STALE_AFTER_S and str(other) not in mounted:
            remove_tree(other)
