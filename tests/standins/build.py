"""Build the stand-in artefacts that test hosts install: a `vllm` wheel and Ollama release assets.

Both builders use only the standard library (plus the `zstd` CLI or the `zstandard` package for
`.tar.zst`), need no network, and are deterministic: the same sources give byte-identical files.

    python tests/standins/build.py vllm OUT_DIR
    python tests/standins/build.py ollama OUT_DIR VERSION [ARCH]
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VLLM_SRC = HERE / "vllm"
OLLAMA_SRC = HERE / "ollama"
DATA = HERE.parent / "data"

VLLM_VERSION = "0.33.0"
# Fixed timestamps make the artefacts reproducible (zip needs a date >= 1980).
ZIP_DATE = (2026, 11, 1, 0, 0, 0)
TAR_MTIME = 1_793_491_200  # 2026-11-01T00:00:00Z
OLLAMA_VERSION_LINE = 'VERSION = "0.0.0"'
ZSTD_SINCE = (0, 14, 0)


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _vllm_files() -> list[tuple[str, bytes]]:
    files = [
        ("vllm/" + p.relative_to(VLLM_SRC).as_posix(), p.read_bytes())
        for p in sorted(VLLM_SRC.rglob("*.py"))
        if "__pycache__" not in p.parts
    ]
    files.append(("vllm/_data/flags.json", (DATA / "vllm-0.33.0-flags.json").read_bytes()))
    files.append(("vllm/_data/serve-help.txt", (DATA / "vllm-0.33.0-serve-help.txt").read_bytes()))
    return files


def build_vllm_wheel(out_dir: Path) -> Path:
    """Write `vllm-0.33.0-py3-none-any.whl` (the stand-in) into `out_dir` and return its path.

    The wheel holds the `vllm` package, the recorded flag table and help text, and a dist-info
    with METADATA (`Requires-Dist: pyyaml`), WHEEL, entry_points.txt (console script `vllm`) and a
    RECORD of sha256 hashes, as pip and uv expect.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dist_info = f"vllm-{VLLM_VERSION}.dist-info"
    metadata = (
        "Metadata-Version: 2.1\n"
        "Name: vllm\n"
        f"Version: {VLLM_VERSION}\n"
        "Summary: servekit test stand-in for vLLM 0.33.0: its CLI and HTTP surface, no engine\n"
        "License: Apache-2.0\n"
        "Requires-Python: >=3.10\n"
        "Requires-Dist: pyyaml\n"
    )
    wheel = (
        "Wheel-Version: 1.0\n"
        "Generator: servekit-standins-build\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    entry_points = "[console_scripts]\nvllm = vllm.entrypoints.cli.main:main\n"
    files = [
        *_vllm_files(),
        (f"{dist_info}/METADATA", metadata.encode()),
        (f"{dist_info}/WHEEL", wheel.encode()),
        (f"{dist_info}/entry_points.txt", entry_points.encode()),
        (f"{dist_info}/top_level.txt", b"vllm\n"),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{dist_info}/RECORD,,\n"
    files.append((f"{dist_info}/RECORD", record.encode()))
    path = out_dir / f"vllm-{VLLM_VERSION}-py3-none-any.whl"
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(path)
    return path


def _version_tuple(version: str) -> tuple[int, int, int]:
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"not an Ollama version: {version!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _ollama_tar(version: str) -> bytes:
    script = (OLLAMA_SRC / "bin" / "ollama").read_text()
    if OLLAMA_VERSION_LINE not in script:
        raise RuntimeError(f"{OLLAMA_VERSION_LINE!r} not found in the ollama stand-in script")
    script = script.replace(OLLAMA_VERSION_LINE, f'VERSION = "{version.lstrip("v")}"', 1)
    entries: list[tuple[str, bytes | None, int]] = [
        (".", None, 0o755),
        ("./bin", None, 0o755),
        ("./bin/ollama", script.encode(), 0o755),
        ("./lib", None, 0o755),
        ("./lib/ollama", None, 0o755),
    ]
    for lib in sorted((OLLAMA_SRC / "lib" / "ollama").iterdir()):
        entries.append((f"./lib/ollama/{lib.name}", lib.read_bytes(), 0o755))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mtime = TAR_MTIME
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zstd_compress(data: bytes) -> bytes:
    """Compress with the `zstd` CLI if present, else the `zstandard` package."""
    exe = shutil.which("zstd")
    if exe:
        return subprocess.run(
            [exe, "-q", "-19", "-c"], input=data, check=True, capture_output=True
        ).stdout
    try:
        import zstandard  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise RuntimeError(
            "building .tar.zst needs the zstd CLI (apt-get install zstd) or the "
            "zstandard Python package"
        ) from exc
    compressed: bytes = zstandard.ZstdCompressor(level=19).compress(data)
    return compressed


def zstd_decompress(data: bytes) -> bytes:
    """Inverse of zstd_compress, for tests that unpack a release."""
    exe = shutil.which("zstd")
    if exe:
        return subprocess.run(
            [exe, "-q", "-d", "-c"], input=data, check=True, capture_output=True
        ).stdout
    import zstandard  # type: ignore[import-not-found,import-untyped,unused-ignore]

    out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return out


def ollama_asset_name(version: str, arch: str = "amd64") -> str:
    """`ollama-linux-<arch>.tar.zst` from 0.14.0 on, `.tgz` before, as on GitHub releases."""
    ext = "tar.zst" if _version_tuple(version) >= ZSTD_SINCE else "tgz"
    return f"ollama-linux-{arch}.{ext}"


def build_ollama_release(out_dir: Path, version: str, arch: str = "amd64") -> Path:
    """Write the stand-in Ollama release for `version` into `out_dir/v<version>/`; return that dir.

    It holds the Linux archive (`bin/ollama` with the version baked in, `lib/ollama/...`) and a
    `sha256sum.txt` with `<sha256 hex>  <asset name>` lines, like a GitHub release of Ollama.
    """
    version = version.lstrip("v")
    release = out_dir / f"v{version}"
    release.mkdir(parents=True, exist_ok=True)
    name = ollama_asset_name(version, arch)
    tar = _ollama_tar(version)
    if name.endswith(".tar.zst"):
        data = zstd_compress(tar)
    else:
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(tar)
        data = buf.getvalue()
    (release / name).write_bytes(data)
    sums = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(release.iterdir())
        if p.name.startswith("ollama-")
    }
    (release / "sha256sum.txt").write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
    return release


def main(argv: list[str]) -> int:
    """Command line: `vllm OUT_DIR` or `ollama OUT_DIR VERSION [ARCH]`."""
    if len(argv) >= 2 and argv[0] == "vllm":
        print(build_vllm_wheel(Path(argv[1])))
        return 0
    if len(argv) in (3, 4) and argv[0] == "ollama":
        print(build_ollama_release(Path(argv[1]), argv[2], *argv[3:]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
