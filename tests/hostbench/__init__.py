"""Test bench: Debian 12 hosts booted with systemd-nspawn on a bridge, reached over real SSH.

`plugin` holds the pytest fixtures (`test_hosts`, `package_index`, `file_server`, `bench`); the
rest can be used on its own, e.g. `Bench.open().boot(3)` in a script.
"""

from .bench import Bench
from .host import BenchHost, HostCommandError
from .inventory import write_inventory
from .mirrors import FileServer, PackageIndex
from .pyinfra_run import PyinfraRun, run_pyinfra
from .wheels import build_wheel

__all__ = [
    "Bench",
    "BenchHost",
    "FileServer",
    "HostCommandError",
    "PackageIndex",
    "PyinfraRun",
    "build_wheel",
    "run_pyinfra",
    "write_inventory",
]
