"""pytest wiring for the bench: skip or fail `hosts` tests, and the host and mirror fixtures.

Fixtures:
- `bench` (session): the `Bench` of this test process.
- `test_hosts` (module): `test_hosts(count, fresh=False) -> HostSet`; hosts are shared by the
  tests of a module unless `fresh=True`, and all are stopped and removed when the module ends.
- `package_index` (module): a `PackageIndex` on the bridge; `.add(wheel)`, `.url`.
- `file_server` (module): a `FileServer` on the bridge; `.add_file(rel, src)`, `.add_tree(dir)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import settings
from .bench import Bench, tool_missing
from .host import BenchHost
from .inventory import write_inventory
from .mirrors import FileServer, PackageIndex

REQUIRE_ENV = "SERVEKIT_REQUIRE_HOSTS"


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def require_bench() -> None:
    """Skip the calling test when hosts cannot boot here, or fail it when CI requires them."""
    reason = tool_missing()
    if reason is None:
        return
    if _required():
        pytest.fail(f"{REQUIRE_ENV}=1 but test hosts cannot run here: {reason}", pytrace=False)
    pytest.skip(f"test hosts unavailable: {reason}")


def pytest_report_header(config: pytest.Config) -> str:
    reason = tool_missing()
    state = "available" if reason is None else f"unavailable ({reason})"
    return f"hostbench: test hosts {state}; {REQUIRE_ENV}={os.environ.get(REQUIRE_ENV, '')}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("hosts") is not None:
        require_bench()


_opened: list[Bench] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for opened in _opened:
        terminalreporter.write_sep("-", "hostbench timings")
        for line in opened.timings:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def bench() -> Iterator[Bench]:
    """This test process's bench (root filesystem built or reused, bridge up, run registered)."""
    require_bench()
    opened = Bench.open()
    _opened.append(opened)
    try:
        yield opened
    finally:
        opened.close()


@dataclass
class HostSet:
    """Booted hosts and an inventory file listing them all in one group, `servers`."""

    hosts: list[BenchHost]
    inventory: Path

    def __iter__(self) -> Iterator[BenchHost]:
        return iter(self.hosts)

    def __getitem__(self, index: int) -> BenchHost:
        return self.hosts[index]

    def __len__(self) -> int:
        return len(self.hosts)


@dataclass
class HostFactory:
    """`test_hosts(count)`: `count` booted hosts, reusing the module's hosts unless `fresh`."""

    bench: Bench
    workdir: Path
    shared: list[BenchHost] = field(default_factory=list)
    owned: list[BenchHost] = field(default_factory=list)
    calls: int = field(default=0, init=False)

    def __call__(self, count: int, *, fresh: bool = False) -> HostSet:
        if fresh:
            hosts = self.bench.boot(count)
            self.owned += hosts
        else:
            if len(self.shared) < count:
                more = self.bench.boot(count - len(self.shared))
                self.shared += more
                self.owned += more
            hosts = self.shared[:count]
        self.calls += 1
        inventory = self.workdir / f"inventory_{self.calls}" / "inventory.py"
        return HostSet(hosts, write_inventory(inventory, {"servers": hosts}))

    def close(self) -> None:
        self.bench.stop(self.owned)
        self.owned.clear()
        self.shared.clear()


@pytest.fixture(scope="module")
def test_hosts(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostFactory]:
    """A factory for booted test hosts; every host it boots is gone when the module ends."""
    factory = HostFactory(bench, tmp_path_factory.mktemp("hosts"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def package_index(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageIndex]:
    """A package index on the bridge: local wheels first, PyPI for every other project."""
    workdir = tmp_path_factory.mktemp("index")
    with PackageIndex(workdir / "dists", settings.GATEWAY, workdir / "server.log") as index:
        yield index


@pytest.fixture(scope="module")
def file_server(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    """A static file server on the bridge for release tarballs and checksum files."""
    workdir = tmp_path_factory.mktemp("files")
    with FileServer(workdir / "www", settings.GATEWAY, workdir / "server.log") as server:
        yield server
