"""Build a signed flat apt repository (like NVIDIA's CUDA repository) from stand-in packages.

Packages are built with `dpkg-deb`, indexed here (Packages, Packages.gz, Release with checksums)
and signed with a throw-away GnuPG key (InRelease, Release.gpg). Only dpkg-deb and gpg are needed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path


@dataclass
class DebFile:
    """A file inside a package: absolute path, content, mode; `link` makes it a symlink."""

    path: str
    content: bytes = b""
    mode: int = 0o644
    link: str | None = None
    conffile: bool = False


@dataclass
class Deb:
    name: str
    version: str
    architecture: str = "amd64"
    depends: list[str] = field(default_factory=list)
    description: str = "servekit test stand-in"
    files: list[DebFile] = field(default_factory=list)
    postinst: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


def build_deb(deb: Deb, out_dir: Path, work_dir: Path) -> Path:
    """Build one .deb with dpkg-deb (files owned by root) and return its path."""
    root = work_dir / f"{deb.name}-{deb.version}"
    (root / "DEBIAN").mkdir(parents=True)
    control = [
        f"Package: {deb.name}",
        f"Version: {deb.version}",
        f"Architecture: {deb.architecture}",
        "Maintainer: servekit tests <tests@servekit.invalid>",
        "Section: misc",
        "Priority: optional",
    ]
    if deb.depends:
        control.append(f"Depends: {', '.join(deb.depends)}")
    control.append(f"Description: {deb.description}")
    (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
    conffiles = [f.path for f in deb.files if f.conffile]
    if conffiles:
        (root / "DEBIAN/conffiles").write_text("\n".join(conffiles) + "\n")
    if deb.postinst:
        script = root / "DEBIAN/postinst"
        script.write_text("#!/bin/sh\nset -e\n" + deb.postinst + "\n")
        script.chmod(0o755)
    for item in deb.files:
        target = root / item.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.link is not None:
            os.symlink(item.link, target)
        else:
            target.write_bytes(item.content)
            target.chmod(item.mode)
    out = out_dir / deb.filename
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def _control_of(deb_path: Path) -> str:
    done = subprocess.run(
        ["dpkg-deb", "--field", str(deb_path)], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def write_index(repo: Path, origin: str = "NVIDIA", label: str = "NVIDIA CUDA") -> None:
    """Packages, Packages.gz and Release for a flat repository (`deb URL /`) in `repo`."""
    stanzas = []
    for deb_path in sorted(repo.glob("*.deb")):
        data = deb_path.read_bytes()
        stanzas.append(
            f"{_control_of(deb_path)}\nFilename: ./{deb_path.name}\nSize: {len(data)}\n"
            f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    lines = [
        f"Origin: {origin}",
        f"Label: {label}",
        "Architectures: amd64 all",
        f"Date: {formatdate(usegmt=True)}",
    ]
    for algorithm, digest in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{algorithm}:")
        for name in ("Packages", "Packages.gz"):
            data = (repo / name).read_bytes()
            lines.append(f" {digest(data).hexdigest()} {len(data)} {name}")
    (repo / "Release").write_text("\n".join(lines) + "\n")


@dataclass
class SigningKey:
    """A throw-away GnuPG key in its own home directory."""

    home: Path
    fingerprint: str

    def gpg(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--yes", *args],
            check=True,
            capture_output=True,
        )

    def public_key(self) -> bytes:
        """The public key in binary form, as /usr/share/keyrings/*.gpg holds it."""
        return self.gpg("--export", self.fingerprint).stdout

    def sign(self, repo: Path) -> None:
        release = str(repo / "Release")
        self.gpg(
            "--local-user", self.fingerprint, "--clearsign", "-o", str(repo / "InRelease"), release
        )
        self.gpg("--local-user", self.fingerprint, "-abs", "-o", str(repo / "Release.gpg"), release)


def make_signing_key(home: Path) -> SigningKey:
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    key = SigningKey(home, "")
    key.gpg(
        "--passphrase",
        "",
        "--quick-generate-key",
        "servekit test repository",
        "ed25519",
        "sign",
        "1d",
    )
    listing = key.gpg("--with-colons", "--list-secret-keys").stdout.decode()
    key.fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")
    )
    return key
