"""Shell scripts that install a pinned Ollama release (verified against its `sha256sum.txt`
before anything changes) and wait until the server answers."""

from __future__ import annotations

import re
from collections.abc import Sequence

from servekit import shell
from servekit.ollama.layout import (
    LINUX_BINARY,
    LINUX_LIBS,
    LINUX_PREFIX,
    MacLayout,
    asset_name,
    release_url,
)


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
