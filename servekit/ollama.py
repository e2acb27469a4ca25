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
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from servekit import catalog, shell, systemd

System = Literal["linux", "macos"]

# Linux: a system install, as Ollama's docs lay it out.
LINUX_PREFIX = "/usr/local"
LINUX_BINARY = f"{LINUX_PREFIX}/bin/ollama"
LINUX_LIBS = f"{LINUX_PREFIX}/lib/ollama"
SERVICE_USER = "ollama"
SERVICE_HOME = "/var/lib/ollama"
GPU_GROUPS = ("render", "video")
"""Groups that own GPU device nodes (AMD's /dev/kfd and /dev/dri); the user joins those present."""
INSTALL_SH_MODELS = "/usr/share/ollama/.ollama/models"
"""Where Ollama's install.sh keeps models (its `ollama` user's home)."""
UNIT = "ollama.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
DROPIN_FILE = f"/etc/systemd/system/{UNIT}.d/servekit.conf"
LINUX_PACKAGES = ("curl", "ca-certificates")
"""What the deploy needs on a Debian/Ubuntu host (plus `zstd` for `.tar.zst` releases)."""

# macOS: everything in the login user's home, nothing needs sudo.
LAUNCHD_LABEL = "com.servekit.ollama"
HOME_PLACEHOLDER = "<home>"
"""Stands for the login user's home in `servekit render` output (known once facts are read)."""

READY_TIMEOUT_S = 90
PULL_STALL_S = 600
"""A pull that receives nothing for this long fails (a 40 GB blob's verification is silent)."""


class ReleaseError(ValueError):
    """A host this module cannot install Ollama on (architecture, system)."""


def go_arch(machine: str) -> str:
    """`uname -m` as Ollama's release assets name it: x86_64 → amd64, aarch64/arm64 → arm64."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine.strip().lower()
    )
    if arch is None:
        raise ReleaseError(
            f"Ollama publishes Linux builds for x86_64 and arm64 only, not {machine.strip()!r}"
        )
    return arch


def asset_name(version: str, system: System, arch: str = "amd64") -> str:
    """The release asset to install: `ollama-darwin.tgz` on macOS; on Linux
    `ollama-linux-<arch>.tar.zst` from 0.14.0 on, `.tgz` before (as on GitHub releases)."""
    if system == "macos":
        return "ollama-darwin.tgz"
    zstd_since = catalog.version_tuple(catalog.ollama_versions().zstd_since)
    ext = "tar.zst" if catalog.version_tuple(version) >= zstd_since else "tgz"
    return f"ollama-linux-{arch}.{ext}"


def release_url(base_url: str, version: str) -> str:
    """The folder of one release: `<base>/v<version>` (GitHub's layout, which mirrors copy)."""
    return f"{base_url.rstrip('/')}/v{version.removeprefix('v')}"


def api_url(listen: str) -> str:
    """Where a client on the host itself reaches a server that listens on `listen` (OLLAMA_HOST):
    0.0.0.0 and :: are reached on loopback, as Ollama's own client does."""
    host, _, port = listen.removeprefix("http://").rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def client_version(output: Iterable[str]) -> str | None:
    """The version of the `ollama` binary from `ollama -v`: the `client version is X` warning
    when the server differs (or none answers), else `ollama version is X`."""
    lines = [line.strip() for line in output]
    for marker in ("Warning: client version is ", "ollama version is "):
        for line in lines:
            if line.startswith(marker):
                return line.removeprefix(marker).strip() or None
    return None


def expand_home(value: str, home: str) -> str:
    """`~/x` → `<home>/x`: launchd and Ollama take paths literally, no shell expands them."""
    if value == "~":
        return home
    return f"{home}{value[1:]}" if value.startswith("~/") else value


def normalise(name: str) -> str:
    """A model name as Ollama compares them: `llama3.2` is `llama3.2:latest`."""
    return catalog.normalise_ollama_tag(name)


@dataclass(frozen=True)
class MacLayout:
    """Where Ollama lives on a Mac, in the login user's home."""

    home: str
    version: str

    @property
    def root(self) -> str:
        return f"{self.home}/.servekit/ollama"

    @property
    def install_dir(self) -> str:
        return f"{self.root}/{self.version}"

    @property
    def binary(self) -> str:
        return f"{self.install_dir}/ollama"

    @property
    def link(self) -> str:
        """`~/.servekit/bin/ollama`, the CLI of the running version for the user's PATH."""
        return f"{self.home}/.servekit/bin/ollama"

    @property
    def plist(self) -> str:
        return f"{self.home}/Library/LaunchAgents/{LAUNCHD_LABEL}.plist"

    @property
    def log(self) -> str:
        """Where the Ollama app logs too, so the usual troubleshooting advice applies."""
        return f"{self.home}/.ollama/logs/server.log"


# --- installing a release -------------------------------------------------------------------


def _download_and_verify(base: str, asset: str, sha256: str, netrc: str | None = None) -> list[str]:
    """Shell lines: fetch the asset and sha256sum.txt into "$tmp", stop unless the digests match.

    Every value (URLs, the asset's name, the netrc file's path) is one quoted word
    (`servekit.shell`); a mirror's login comes from `netrc` (`curl --netrc-file`), never argv.
    """
    q, tmp = shell.quote, shell.var("tmp")
    curl = ["curl", "-fsSL", "--retry", "3", "--connect-timeout", "20"]
    if netrc:
        curl += ["--netrc-file", netrc]
    sums_url, asset_url = f"{base}/sha256sum.txt", f"{base}/{asset}"
    sums, archive = shell.word(tmp, "/sha256sum.txt"), shell.word(tmp, "/", asset)
    # GitHub's file lists `./<asset>` (the release job runs `find . | xargs sha256sum`); mirrors
    # and `sha256sum` itself write `<asset>` (or `*<asset>` in binary mode).
    pick = r"""'{ n = $2; sub(/^[*]/, "", n); sub(/^\.\//, "", n) } n == a { print $1; exit }'"""
    return [
        f"{shell.join(curl)} -o {sums} {q(sums_url)} || " + shell.die("cannot download ", sums_url),
        f"{shell.join(curl)} -o {archive} {q(asset_url)} || "
        + shell.die("cannot download ", asset_url),
        f"want=$(awk -v a={q(asset)} {pick} {sums})",
        '[ -n "$want" ] || ' + shell.die(asset, " is not listed in ", sums_url),
        f'have=$({sha256} {archive} | cut -d " " -f 1)',
        '[ "$have" = "$want" ] || '
        + shell.die(
            "refusing ",
            asset_url,
            ": its sha256 is ",
            shell.var("have"),
            ", ",
            sums_url,
            " says ",
            shell.var("want"),
            " (a corrupt download or a tampered mirror); the installed Ollama is left as it is",
        ),
    ]


def _script(lines: Sequence[str]) -> str:
    """POSIX sh, one command for pyinfra: stops at the first failure, cleans its temp dir."""
    return "\n".join(["set -e", *lines])


def install_linux(version: str, base_url: str, arch: str, netrc: str | None = None) -> str:
    """Install Ollama `version` to /usr/local from its verified release archive.

    The archive is checked and unpacked in a temp dir first; only then is the old `lib/ollama`
    moved aside, the new one moved in and `bin/ollama` replaced by a rename (the running server
    keeps its binary until it restarts). A bad download changes nothing.
    """
    q, tmp = shell.quote, shell.var("tmp")
    asset = asset_name(version, "linux", arch)
    base = release_url(base_url, version)
    archive, unpacked = shell.word(tmp, "/", asset), shell.word(tmp, "/unpack")
    unpack = (
        f"zstd -dc {archive} | tar -x -C {unpacked}"
        if asset.endswith(".tar.zst")
        else f"tar -xzf {archive} -C {unpacked}"
    )
    libs, libs_old, binary = q(LINUX_LIBS), q(f"{LINUX_LIBS}.old"), q(LINUX_BINARY)
    new_libs = shell.word(tmp, "/unpack/lib/ollama")
    new_binary = shell.word(tmp, "/unpack/bin/ollama")
    return _script(
        [
            "tmp=$(mktemp -d /var/tmp/servekit-ollama.XXXXXX)",
            "trap 'rm -rf \"$tmp\"' EXIT",
            *_download_and_verify(base, asset, "sha256sum", netrc),
            f"mkdir {unpacked}",
            unpack,
            f"[ -f {new_binary} ] || " + shell.die(asset, " holds no bin/ollama"),
            f"mkdir -p {q(LINUX_PREFIX + '/bin')} {q(LINUX_PREFIX + '/lib')}",
            f"rm -rf {libs_old}",
            f"if [ -e {libs} ]; then mv {libs} {libs_old}; fi",
            f"if [ -d {new_libs} ]; then mv {new_libs} {libs}; fi",
            f"chown -R root:root {libs} 2>/dev/null || true",
            f"install -o root -g root -m 0755 {new_binary} {q(LINUX_BINARY + '.new')}",
            f"mv -f {q(LINUX_BINARY + '.new')} {binary}",
            f"rm -rf {libs_old}",
        ]
    )


def install_macos(version: str, base_url: str, layout: MacLayout, netrc: str | None = None) -> str:
    """Install Ollama `version` into `~/.servekit/ollama/<version>/` from the verified
    `ollama-darwin.tgz`, then remove other versions (models live in ~/.ollama, untouched)."""
    asset = asset_name(version, "macos")
    base = release_url(base_url, version)
    q, tmp = shell.quote, shell.var("tmp")
    final, staging = q(layout.install_dir), q(f"{layout.install_dir}.partial")
    return _script(
        [
            f"mkdir -p {q(layout.root)}",
            f"tmp=$(mktemp -d {q(layout.root + '/.download.XXXXXX')})",
            "trap 'rm -rf \"$tmp\"' EXIT",
            *_download_and_verify(base, asset, "shasum -a 256", netrc),
            f"rm -rf {staging} && mkdir -p {staging}",
            f"tar -xzf {shell.word(tmp, '/', asset)} -C {staging}",
            f"[ -f {staging}/ollama ] || " + shell.die(asset, " holds no ollama"),
            f"chmod 0755 {staging}/ollama",
            f"rm -rf {final} && mv {staging} {final}",
            f'for old in {q(layout.root)}/*; do [ "$old" = {final} ] || rm -rf "$old"; done',
        ]
    )


def ready_command(url: str, version: str, timeout_s: int, log_command: str) -> str:
    """Wait (at most `timeout_s`) until `GET /` answers and `/api/version` is `version`; on
    timeout print the server's last log lines and fail."""
    q = shell.quote
    want = '"version" *: *"' + re.escape(version) + '"'  # {"version":"X"}, spaces or not
    probe = (
        f"curl -fsS --max-time 3 -o /dev/null {q(url + '/')} && "
        f"curl -fsS --max-time 3 {q(url + '/api/version')} | grep -E -q {q(want)}"
    )
    return _script(
        [
            f"end=$(( $(date +%s) + {int(timeout_s)} ))",
            f"until {probe}; do",
            '  if [ "$(date +%s)" -ge "$end" ]; then',
            "    "
            + shell.say(
                f"Ollama {version} did not answer GET {url}/ within {int(timeout_s)} s; "
                "its last log lines:"
            ),
            f"    {log_command} >&2 || true",
            "    exit 1",
            "  fi",
            "  sleep 1",
            "done",
        ]
    )


# --- models ---------------------------------------------------------------------------------

# Reads Ollama's NDJSON pull stream line by line (POSIX awk: mawk, gawk, macOS's BSD awk): every
# line is checked for an "error" field (Ollama reports failures that way after HTTP 200), progress
# is printed per status and per 10 %, and the pull counts only if it ends with "success".
PULL_AWK = r"""
function str(key,   re, s) {
    re = "\"" key "\":\"([^\"\\\\]|\\\\.)*\""
    if (!match($0, re)) return ""
    s = substr($0, RSTART + length(key) + 4, RLENGTH - length(key) - 5)
    gsub(/\\"/, "\"", s)
    return s
}
function num(key,   re) {
    re = "\"" key "\":[0-9]+"
    if (!match($0, re)) return -1
    return substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3) + 0
}
function size(n) {
    if (n >= 1e9) return sprintf("%.1f GB", n / 1e9)
    if (n >= 1e6) return sprintf("%.0f MB", n / 1e6)
    if (n >= 1e3) return sprintf("%.0f KB", n / 1e3)
    return sprintf("%d B", n)
}
function say(text) { print model ": " text; fflush() }
/^servekit-curl-exit=/ {
    code = substr($0, 20) + 0
    if (code != 0 && !failed) {
        say("error: the pull from " url " broke off (curl exit " code ")")
        failed = 1
    }
    next
}
/^[ \t]*\{/ {
    if ($0 ~ /"error"[ \t]*:/) {
        text = str("error")
        if (text == "") text = $0
        say("error: " text)
        failed = 1
        next
    }
    status = str("status")
    total = num("total")
    done = num("completed")
    if (status == "success") ok = 1
    if (total > 0) {
        if (done < 0) done = 0
        step = int(done * 10 / total)
        if (status != last || step != laststep) {
            say(sprintf("%s %d%% of %s", status, step * 10, size(total)))
            last = status
            laststep = step
        }
    } else if (status != "" && status != last) {
        say(status)
        last = status
        laststep = -1
    }
    next
}
NF { say($0) }
END {
    if (failed) exit 1
    if (!ok) { say("error: the pull ended without success"); exit 1 }
}
"""


def pull_command(model: str, url: str, stall_s: int = PULL_STALL_S) -> str:
    """Pull `model` through `POST /api/pull` (streamed) on the host, printing progress lines
    `MODEL: ...`; fails with `MODEL: error: ...` on any error line, a broken stream, or no
    `success`."""
    q = shell.quote
    body = json.dumps({"model": model, "stream": True})
    curl = (
        f"curl -sS -N --connect-timeout 10 --speed-limit 1 --speed-time {int(stall_s)} "
        f"-H 'Content-Type: application/json' --data-binary {q(body)} {q(url + '/api/pull')}"
    )
    return (
        f'{{ {curl}; echo "servekit-curl-exit=$?"; }} 2>&1 | '
        f"awk -v model={q(model)} -v url={q(url)} {q(PULL_AWK.strip())}"
    )


def delete_command(model: str, url: str) -> str:
    """Delete `model` through `DELETE /api/delete`."""
    q = shell.quote
    body = json.dumps({"model": model})
    return (
        "curl -fsS --max-time 60 -X DELETE -H 'Content-Type: application/json' "
        f"--data-binary {q(body)} {q(url + '/api/delete')}"
    )


@dataclass(frozen=True)
class ModelChanges:
    """What a model sync does: pull the missing declared models, delete the undeclared ones."""

    pull: list[str]
    delete: list[str]


def model_changes(declared: Sequence[str], present: Iterable[str], prune: bool) -> ModelChanges:
    """Compare by Ollama's normalised names; keep the declared order for pulls."""
    have = {normalise(name): name for name in present}
    wanted = list(dict.fromkeys(normalise(name) for name in declared))
    pull = [name for name in wanted if name not in have]
    delete = sorted(have[n] for n in have if n not in wanted) if prune else []
    return ModelChanges(pull, delete)


# --- the data directory ---------------------------------------------------------------------


class PathEntry(TypedDict):
    path: str
    mode: int
    owner: str
    group: str


SYSTEM_DIRS = frozenset(
    {
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
        "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys",
        "/tmp", "/usr", "/var", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/libexec",
        "/usr/local", "/usr/local/bin", "/usr/local/lib", "/usr/local/sbin", "/usr/local/share",
        "/usr/sbin", "/usr/share", "/usr/src", "/var/cache", "/var/lib", "/var/log", "/var/mail",
        "/var/opt", "/var/spool", "/var/tmp", "/var/www",
    }
)  # fmt: skip
"""Directories a deploy must never hand to the service user (`chown ollama`), whatever a plan says
(the schema refuses them at load too; this is the deploy's own guard)."""
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/run", "/sbin", "/sys")
"""Trees no part of which is a data directory."""


def data_dir_problem(path: str) -> str | None:
    """Why `path` must not become the service user's data directory (owned by it), or None:
    not absolute, not normalised, a system directory, or inside a system tree."""
    if not path.startswith("/") or shell.CONTROL.search(path):
        return f"{path!r} is not an absolute path"
    parts = path.split("/")[1:]
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        return f"{path!r} is not a normalised path (no '//', '.', '..' or trailing '/')"
    if path in SYSTEM_DIRS:
        return f"{path} is a system directory: servekit never gives it to the {SERVICE_USER} user"
    if any(path.startswith(tree + "/") for tree in SYSTEM_TREES):
        return f"{path} is inside a system directory: choose a data directory such as /srv/ollama"
    return None


def parents(path: str) -> list[str]:
    """`/a/b/c` → [`/a`, `/a/b`]: the directories a process must traverse to reach `path`."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts) - 1)]


def untraversable(entries: Iterable[PathEntry], user: str, groups: Iterable[str]) -> list[str]:
    """Directories the service user cannot enter (no x bit for it as owner, group or other)."""
    member = set(groups)
    blocked = []
    for entry in entries:
        mode = entry["mode"]
        if entry["owner"] == user:
            allowed = bool(mode & 0o100)
        elif entry["group"] in member:
            allowed = bool(mode & 0o010)
        else:
            allowed = bool(mode & 0o001)
        if not allowed:
            blocked.append(entry["path"])
    return blocked


# --- systemd quoting: servekit/systemd.py, re-exported for existing callers -----------------

systemd_quote = systemd.quote
environment_lines = systemd.environment_lines
