"""Helpers for the vLLM deploy's host tests: fleets written as users write inventories, fake
GPUs, local weights, secrets, and the deploy run through the pyinfra CLI."""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hostbench import BenchHost, PyinfraRun, run_pyinfra

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploys" / "vllm.py"
FAKE_SMI = Path(__file__).parent / "fakes" / "nvidia-smi"
MODELS = "/srv/models"

INVENTORY = '''"""A fleet of test hosts (written by tests/hosts/vllm_support.py)."""

from servekit.inventory import pyinfra_groups
from servekit.spec import *  # noqa: F403

fleet = {fleet}

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
# Test hosts reuse addresses with new host keys: trust them per inventory, as the bench does.
for _group in (gpu, vllm, ollama, gateway, monitoring):
    for _name, _data in _group:
        _data["ssh_known_hosts_file"] = {known_hosts!r}
'''


REGISTER = """
from servekit import catalog as _catalog

_catalog.vllm_releases()[{version!r}] = _catalog.VllmRelease(
    version={version!r}, released="2026-11-20", python=">=3.11,<3.15", torch="2.14.0",
    builds=(_catalog.VllmBuild(cuda="13.0", min_driver="580.65.06", source="pypi"),),
)
"""


def register_release(inventory: Path, version: str) -> None:
    """Add a catalog entry for stand-in vLLM `version` to an inventory (tests only)."""
    register = REGISTER.format(version=version)
    inventory.write_text(inventory.read_text().replace("fleet = ", register + "\nfleet = ", 1))


def write_fleet(path: Path, fleet: str) -> Path:
    """An inventory file declaring `fleet` (Python source of a `Fleet(...)` expression)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    known = path.with_suffix(".known_hosts")
    known.touch()
    path.write_text(INVENTORY.format(fleet=fleet, known_hosts=str(known)))
    return path


def ssh_host(
    host: BenchHost, gpus: int = 1, model: str = "A100-80GB", user: str = "root", **extra: str
) -> str:
    """Source of an `SshHost` for a bench host (`user="debian"`: the image's sudo user)."""
    more = "".join(f", {k}={v}" for k, v in extra.items())
    return (
        f"SshHost(name={host.name!r}, address={host.address!r}, ssh_user={user!r}, "
        f"ssh_key={str(host.ssh_key)!r}, gpu=Gpu(model={model!r}, count={gpus}){more})"
    )


def secret(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def fake_gpus(host: BenchHost, count: int = 1, driver: str = "580.95.05") -> None:
    """Install the test's nvidia-smi (A100s with `driver`) on a GPU-less test host."""
    host.run("cat > /usr/local/bin/nvidia-smi && chmod 755 /usr/local/bin/nvidia-smi",
             stdin=FAKE_SMI.read_text())  # fmt: skip
    host.run(f"printf 'count={count}\\ndriver={driver}\\n' > /etc/fake-nvidia-smi")


def put_model(host: BenchHost, checkpoint: str, max_len: int = 131072, root: str = MODELS) -> str:
    """A checkpoint directory the stand-in vLLM accepts (config.json), readable by everyone."""
    directory = f"{root}/{checkpoint}"
    config = json.dumps({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": max_len})
    host.run(f"mkdir -p {shlex.quote(directory)} && cat > {shlex.quote(directory)}/config.json "
             f"&& chmod -R a+rX {shlex.quote(root)}", stdin=config)  # fmt: skip
    return directory


def deploy(inventory: Path, *args: str) -> PyinfraRun:
    return run_pyinfra(inventory, DEPLOY, args=args, timeout=900)


def http(
    url: str, key: str | None = None, timeout: float = 5, body: Any = None
) -> tuple[int | None, str]:
    """(status, body) of a GET from this machine (the bridge reaches every test host), or of
    a POST of `body` as JSON when one is given."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return None, str(error)


def wait_for(check: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout}s")


def unit_show(host: BenchHost, unit: str, prop: str) -> str:
    return host.run(f"systemctl show -p {prop} --value {unit}").stdout.strip()


HTTP_PROBE = """
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError as error:
    print(type(getattr(error, "reason", error)).__name__)
"""


def http_from(host: BenchHost, url: str) -> str:
    """GET `url` from a test host: the status code, or the error (`ConnectionRefusedError`)."""
    return host.run(f"python3 -c {shlex.quote(HTTP_PROBE)} {shlex.quote(url)}").stdout.strip()
