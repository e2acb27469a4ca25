"""Ollama on one host, as plain data and shell: where it lives, which release asset it comes from,
and the commands that install it, wait for it and pull models. No pyinfra here (the deploy in
`servekit/deploys/ollama.py` runs these), so every piece is unit-tested as it is.

Choices, and why:

- **Linux**: the release archive (`ollama-linux-<arch>.tar.zst`, `.tgz` before 0.14.0) from the
  fleet's `sources.ollama_releases` (GitHub or a mirror), checked against the release's
  `sha256sum.txt` *before* anything on the host changes, unpacked to `/usr/local` (`bin/ollama`,
  `lib/ollama/`, the old `lib/ollama` moved away first), run by our own systemd unit. Not the
  upstream `install.sh`: it rewrites the unit on every run and installs GPU drivers, which are
  `deploys/gpu.py`'s job.
- **macOS**: the same release's `ollama-darwin.tgz` (a notarized universal binary and its
  libraries), not the Homebrew formula: Homebrew cannot pin a formula version (`brew upgrade`
  moves it, and rewrites `brew services` plists), while the release asset is pinned, verified
  against the same `sha256sum.txt` and served by the same mirror as Linux. It is unpacked per
  version under `~/.servekit/ollama/<version>/` without sudo, and run by our own LaunchAgent.
  Homebrew is still looked for (on its real path: an SSH session's PATH lacks `/opt/homebrew/bin`)
  because a `brew services` Ollama holds the same port and must be stopped.

Submodules: `layout` (paths, release assets, the API address), `install` (install and readiness
scripts), `models` (pull, delete, sync), `datadir` (the service user's data directory), `files`
(the unit, drop-in and plist; imported on its own, as it reads the firewall plan).
"""

from servekit import systemd
from servekit.ollama.datadir import (
    SYSTEM_DIRS,
    SYSTEM_TREES,
    PathEntry,
    data_dir_problem,
    parents,
    untraversable,
)
from servekit.ollama.install import install_linux, install_macos, ready_command
from servekit.ollama.layout import (
    DROPIN_FILE,
    GPU_GROUPS,
    HOME_PLACEHOLDER,
    INSTALL_SH_MODELS,
    LAUNCHD_LABEL,
    LINUX_BINARY,
    LINUX_LIBS,
    LINUX_PACKAGES,
    LINUX_PREFIX,
    PULL_STALL_S,
    READY_TIMEOUT_S,
    SERVICE_HOME,
    SERVICE_USER,
    UNIT,
    UNIT_FILE,
    MacLayout,
    ReleaseError,
    System,
    api_url,
    asset_name,
    client_version,
    expand_home,
    go_arch,
    release_url,
)
from servekit.ollama.models import (
    PULL_AWK,
    ModelChanges,
    delete_command,
    model_changes,
    normalise,
    pull_command,
)

# systemd quoting lives in servekit/systemd.py; re-exported for existing callers.
systemd_quote = systemd.quote
environment_lines = systemd.environment_lines

__all__ = [
    "DROPIN_FILE",
    "GPU_GROUPS",
    "HOME_PLACEHOLDER",
    "INSTALL_SH_MODELS",
    "LAUNCHD_LABEL",
    "LINUX_BINARY",
    "LINUX_LIBS",
    "LINUX_PACKAGES",
    "LINUX_PREFIX",
    "PULL_AWK",
    "PULL_STALL_S",
    "READY_TIMEOUT_S",
    "SERVICE_HOME",
    "SERVICE_USER",
    "SYSTEM_DIRS",
    "SYSTEM_TREES",
    "UNIT",
    "UNIT_FILE",
    "MacLayout",
    "ModelChanges",
    "PathEntry",
    "ReleaseError",
    "System",
    "api_url",
    "asset_name",
    "client_version",
    "data_dir_problem",
    "delete_command",
    "environment_lines",
    "expand_home",
    "go_arch",
    "install_linux",
    "install_macos",
    "model_changes",
    "normalise",
    "parents",
    "pull_command",
    "ready_command",
    "release_url",
    "systemd_quote",
    "untraversable",
]
