"""Build a tiny pure-Python wheel in a test, without any build backend."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel(
    out_dir: Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write `<name>-<version>-py3-none-any.whl` into `out_dir` and return its path.

    `files` maps paths inside the wheel to their text; by default one module named after the
    project that records its version. `requires` become `Requires-Dist` lines.
    """
    dist = re.sub(r"[-_.]+", "_", name)
    files = dict(files or {f"{dist}/__init__.py": f'__version__ = "{version}"\n'})
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {requirement}\n" for requirement in requires
    )
    files[f"{info}/METADATA"] = metadata
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: servekit-testbench\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    record = [
        f"{path},{_record_hash(text.encode())},{len(text.encode())}" for path, text in files.items()
    ]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel
