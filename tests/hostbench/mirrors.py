"""Test-side handles on the local mirrors in `mirror_server.py`: start, fill, stop."""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Self

SERVER = Path(__file__).with_name("mirror_server.py")
START_TIMEOUT_S = 15.0
PYPI_SIMPLE = "https://pypi.org/simple"


class MirrorProcess:
    """One `mirror_server.py` child process serving `directory` on `bind`."""

    def __init__(
        self, kind: str, directory: Path, bind: str, log: Path, extra_args: tuple[str, ...] = ()
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        argv = [sys.executable, str(SERVER), kind, "--dir", str(directory), "--bind", bind]
        with log.open("ab") as log_file:
            self._process = subprocess.Popen(
                [*argv, *extra_args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], START_TIMEOUT_S)
        line = self._process.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{kind} mirror did not start; see {log}")
        self.base_url = line.split()[1]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a bound)."""
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()


class PackageIndex(MirrorProcess):
    """A PEP 503 index of local wheels that falls through to PyPI for every other project.

    `url` is what `pip --index-url` / `uv pip install --index-url` take.
    """

    def __init__(self, directory: Path, bind: str, log: Path, upstream: str = PYPI_SIMPLE) -> None:
        super().__init__("index", directory, bind, log, ("--upstream", upstream))
        self.url = f"{self.base_url}/simple/"

    def add(self, *distributions: Path) -> None:
        """Serve these wheel or sdist files from now on."""
        for path in distributions:
            shutil.copy2(path, self.directory / path.name)


class FileServer(MirrorProcess):
    """A directory tree served as-is over HTTP; `url_for(rel)` is where a file appears."""

    def __init__(self, directory: Path, bind: str, log: Path) -> None:
        super().__init__("files", directory, bind, log)
        self.url = self.base_url

    def add_file(self, rel_path: str, source: Path | bytes) -> str:
        """Serve `source` (a file or its bytes) at `rel_path`; return its URL."""
        target = self.directory / rel_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            target.write_bytes(source)
        else:
            shutil.copy2(source, target)
        return self.url_for(rel_path)

    def add_tree(self, source: Path, prefix: str = "") -> str:
        """Serve the contents of directory `source` under `prefix`; return the prefix's URL."""
        shutil.copytree(source, self.directory / prefix.strip("/"), dirs_exist_ok=True)
        return self.url_for(prefix)

    def url_for(self, rel_path: str) -> str:
        """The URL of a path in the tree."""
        return f"{self.url}/{rel_path.lstrip('/')}"
