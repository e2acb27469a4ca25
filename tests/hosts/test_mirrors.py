"""The local mirrors serve test hosts: pip and uv install through the index, files download."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import pytest
from hostbench import FileServer, PackageIndex, build_wheel
from hostbench.plugin import HostFactory

from servekit import pyenv

pytestmark = pytest.mark.hosts

APT_INSTALL = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends"
CHECK = "import sk_demo, six; assert sk_demo.__version__ == '1.0.0'; print(six.__version__)"


def test_pip_and_uv_install_a_local_wheel_with_a_pypi_dependency(
    test_hosts: HostFactory, package_index: PackageIndex, tmp_path: Path
) -> None:
    package_index.add(build_wheel(tmp_path, "sk-demo", "1.0.0", requires=["six>=1.16"]))
    (host,) = test_hosts(1)
    host.run(f"apt-get update -q && {APT_INSTALL} python3-venv", timeout=600)

    pip_args = shlex.join(pyenv.pip_index_args(package_index.url))
    host.run("python3 -m venv /opt/pip-env")
    host.run(f"/opt/pip-env/bin/pip install -q {pip_args} sk-demo==1.0.0", timeout=300)
    assert host.run(f'/opt/pip-env/bin/python -c "{CHECK}"').stdout.strip()

    host.run(pyenv.bootstrap_uv(package_index.url), timeout=300)
    host.run(pyenv.create_venv("/opt/uv-env"), timeout=120)
    host.run(
        pyenv.install_packages("/opt/uv-env", ["sk-demo==1.0.0"], package_index.url), timeout=300
    )
    assert host.run(f'/opt/uv-env/bin/python -c "{CHECK}"').stdout.strip()


def test_file_server_serves_a_release_with_its_checksum(
    test_hosts: HostFactory, file_server: FileServer
) -> None:
    payload = b"stand-in release\n" * 1000
    file_server.add_file("v0.32.3/ollama-linux-amd64.tar.zst", payload)
    digest = hashlib.sha256(payload).hexdigest()
    sums = file_server.add_file(
        "v0.32.3/sha256sum.txt", f"{digest}  ./ollama-linux-amd64.tar.zst\n".encode()
    )
    (host,) = test_hosts(1)

    base = sums.rsplit("/", 1)[0]
    host.run(
        f"mkdir -p /tmp/dl && cd /tmp/dl"
        f" && curl -fsSLO --max-time 30 {base}/ollama-linux-amd64.tar.zst"
        f" && curl -fsSLO --max-time 30 {sums} && sha256sum -c sha256sum.txt"
    )
    assert host.run("sha256sum /tmp/dl/ollama-linux-amd64.tar.zst").stdout.split()[0] == digest
