"""The local package index and file server, run on loopback with a stand-in for PyPI."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostbench import FileServer, PackageIndex, build_wheel


def fetch(url: str, accept: str = "text/html") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, "", b""


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[FileServer]:
    """A stand-in for pypi.org: simple pages for `six` and for `sk-demo`."""
    with FileServer(tmp_path / "upstream", "127.0.0.1", tmp_path / "upstream.log") as server:
        server.add_file("simple/six/index.html", b'<a href="https://example.invalid/six.whl">6</a>')
        server.add_file(
            "simple/sk-demo/index.html", b'<a href="https://example.invalid/x.whl">x</a>'
        )
        yield server


@pytest.fixture
def index(tmp_path: Path, upstream: FileServer) -> Iterator[PackageIndex]:
    with PackageIndex(
        tmp_path / "dists", "127.0.0.1", tmp_path / "index.log", upstream=upstream.url_for("simple")
    ) as served:
        yield served


def test_local_project_is_served_from_the_directory_only(
    index: PackageIndex, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path / "build", "sk-demo", "1.0.0", requires=["six"])
    index.add(wheel)

    status, _, page = fetch(index.url + "SK_Demo/")
    assert status == 200
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f'href="/files/{wheel.name}#sha256={digest}"' in page.decode()
    assert b"example.invalid" not in page  # PyPI's sk-demo never shadows the local one

    status, _, body = fetch(f"{index.base_url}/files/{wheel.name}")
    assert status == 200 and body == wheel.read_bytes()


def test_other_projects_fall_through_to_upstream(index: PackageIndex) -> None:
    status, content_type, page = fetch(index.url + "six/")
    assert status == 200 and content_type.startswith("text/html")
    assert b"https://example.invalid/six.whl" in page
    assert fetch(index.url + "no-such-project/")[0] == 404


def test_pip_resolves_through_the_index(index: PackageIndex, tmp_path: Path) -> None:
    index.add(build_wheel(tmp_path / "build", "sk-demo", "1.0.0"))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps", "--quiet",
         "--index-url", index.url, "--dest", str(tmp_path / "got"), "sk-demo==1.0.0"],
        check=True,
    )  # fmt: skip
    assert [p.name for p in (tmp_path / "got").iterdir()] == ["sk_demo-1.0.0-py3-none-any.whl"]


def test_file_server_serves_files_and_trees(tmp_path: Path) -> None:
    release = tmp_path / "release"
    (release / "v1").mkdir(parents=True)
    (release / "v1" / "sha256sum.txt").write_text("abc  ./x\n")
    with FileServer(tmp_path / "www", "127.0.0.1", tmp_path / "files.log") as server:
        url = server.add_file("v0.32.3/ollama-linux-amd64.tar.zst", b"data")
        assert url == f"{server.url}/v0.32.3/ollama-linux-amd64.tar.zst"
        assert fetch(url)[2] == b"data"
        server.add_tree(release, "mirror")
        assert fetch(server.url_for("mirror/v1/sha256sum.txt"))[2] == b"abc  ./x\n"
