"""NVIDIA's apt repository: its directory and architecture per release, the mirror URL, and
the cuda-keyring package that holds its key (pinned sha256, checked before `dpkg -i`)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from servekit import catalog, shell

DEFAULT_MIRROR = "https://developer.download.nvidia.com/compute/cuda/repos"
REPOSITORIES = {("ubuntu", "22.04"): "ubuntu2204", ("ubuntu", "24.04"): "ubuntu2404"} | {
    ("debian", "12"): "debian12"
}
REPOSITORY_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "sbsa", "arm64": "sbsa"}
KEYRING_PACKAGE = "cuda-keyring"
KEYRING_VERSION = catalog.cuda_keyring_version()
KEYRING_SHA256_DATA_KEY = "servekit_cuda_keyring_sha256"
"""pyinfra host data that overrides the catalog's cuda-keyring pin (a test repository's own key
package, or a mirror that repackages NVIDIA's key)."""
SHA256 = re.compile(r"^[0-9a-f]{64}$")
KEYRING_FILE = "/usr/share/keyrings/cuda-archive-keyring.gpg"


class PolicyError(ValueError):
    """A host or fleet choice this policy cannot serve; the message says why and what to do."""


def repository(os_id: str, version_id: str, arch: str) -> tuple[str, str]:
    """NVIDIA's repository directory and architecture for a release: ('ubuntu2404', 'x86_64')."""
    directory = REPOSITORIES.get((os_id, version_id))
    if directory is None:
        supported = ", ".join(f"{i} {v}" for i, v in REPOSITORIES)
        raise PolicyError(f"{os_id} {version_id} is not supported (supported: {supported})")
    repo_arch = REPOSITORY_ARCH.get(arch)
    if repo_arch is None:
        raise PolicyError(f"architecture {arch} has no NVIDIA CUDA repository")
    return directory, repo_arch


def repository_url(mirror: str, directory: str, arch: str) -> str:
    """The repository's URL for a release (`<mirror>/<directory>/<arch>/`), as apt's `URIs:`.

    It becomes one deb822 field value: a mirror with a control character (a newline could add a
    `Trusted: yes` field), a space (a second URI), user info (credentials belong in
    `Sources.mirror_credentials`) or another scheme is refused (PolicyError)."""
    if problem := mirror_problem(mirror):
        raise PolicyError(problem)
    return f"{mirror.rstrip('/')}/{directory}/{arch}/"


def mirror_problem(mirror: str) -> str | None:
    """Why `mirror` cannot be NVIDIA's repository URL in an apt sources file, or None."""
    parts = urlsplit(mirror)
    if shell.CONTROL.search(mirror) or any(c.isspace() for c in mirror):
        return f"sources.nvidia_apt {mirror!r} contains a space or a control character"
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.path):
        return f"sources.nvidia_apt {mirror!r} is not an http(s) URL"
    if "@" in parts.netloc:
        return (
            f"sources.nvidia_apt {mirror!r} carries a login: put it in "
            "Sources(mirror_credentials=SecretRef(...)) instead"
        )
    return None


def keyring_deb_url(repository: str) -> str:
    """The cuda-keyring .deb servekit installs, in the repository (or its mirror)."""
    return f"{repository}{KEYRING_PACKAGE}_{KEYRING_VERSION}_all.deb"


def keyring_sha256(directory: str, arch: str, override: object = None) -> str:
    """The sha256 the cuda-keyring .deb must have: the host's override, else the catalog's pin
    for the repository directory and architecture; PolicyError when there is none or it is not
    a sha256."""
    pinned = str(override) if override else catalog.cuda_keyring_sha256(directory, arch)
    if pinned is None:
        raise PolicyError(
            f"servekit has no pinned sha256 for {KEYRING_PACKAGE} {KEYRING_VERSION} of "
            f"{directory}/{arch}: add it to [cuda_keyring.sha256] in servekit/catalog/"
            f"versions.toml (or set the host's pyinfra data {KEYRING_SHA256_DATA_KEY})"
        )
    if not SHA256.match(pinned):
        raise PolicyError(f"{pinned!r} is not a sha256 (64 lowercase hex digits)")
    return pinned


def keyring_verify_command(path: str, sha256: str, url: str) -> str:
    """Shell: stop (and delete `path`) unless the downloaded .deb has the pinned sha256; run
    between the download and `dpkg -i`, so a tampered or corrupt key package is never
    installed."""
    q = shell.quote
    if not SHA256.match(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return (
        f"have=$(sha256sum {q(path)} | cut -d ' ' -f 1) && "
        f'{{ [ "$have" = {q(sha256)} ] || {{ rm -f {q(path)}; '
        + shell.die(
            "refusing ",
            url,
            ": its sha256 is ",
            shell.var("have"),
            f", servekit pins {sha256} for {KEYRING_PACKAGE} {KEYRING_VERSION} (a tampered or "
            "corrupt download); nothing was installed",
        )
        + "; }; }"
    )
