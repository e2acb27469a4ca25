"""Where deploys/ollama.py takes its settings from, and that it says so: the inventory's servekit
host data; else a fleet file from `--data servekit_fleet=...` or `$SERVEKIT_FLEET`; else
inventories/laptop.py. Runs the `pyinfra` CLI with `--dry` against `@local` (nothing changes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from servekit.errors import FleetError
from servekit.fleetfile import pick_host_plan
from servekit.placement import plan_fleet
from servekit.spec import Fleet, LocalHost, Serve, SshHost

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")

pytestmark = pytest.mark.timeout(300)


def fleet_file(path: Path, name: str, model: str) -> Path:
    path.write_text(
        "from servekit.inventory import pyinfra_groups\n"
        "from servekit.localhost import local_os\n"
        "from servekit.spec import Fleet, LocalHost, Serve, SshHost\n"
        f"fleet = Fleet(name={name!r}, machines=[SshHost(name='nas', address='10.9.9.9'), "
        f"LocalHost(os=local_os())], serve=[Serve(model={model!r}, engine='ollama')])\n"
        "gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)\n"
    )
    return path


def dry_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SERVEKIT_FLEET"}
    done = subprocess.run(
        [str(PYINFRA), *args, "--dry"],
        cwd=ROOT,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_at_local_takes_the_fleets_local_host_and_another_host_its_machine() -> None:
    fleet = Fleet(
        name="team",
        machines=[SshHost(name="nas", address="10.9.9.9"), LocalHost(name="me")],
        serve=[Serve(model="qwen2.5:0.5b", engine="ollama")],
    )
    plan = plan_fleet(fleet)
    assert pick_host_plan(fleet, plan, "@local", local=True).name == "me"
    assert pick_host_plan(fleet, plan, "nas", local=False).name == "nas"
    with pytest.raises(FleetError, match="no machine is named 'nas2'"):
        pick_host_plan(fleet, plan, "nas2", local=False)
    remote = Fleet(name="remote", machines=[fleet.machines[0]], serve=fleet.serve)
    with pytest.raises(FleetError, match="this is @local, and the fleet declares no LocalHost"):
        pick_host_plan(remote, plan_fleet(remote), "@local", local=True)


def test_a_servekit_inventory_carries_the_settings() -> None:
    done = dry_run("inventories/laptop.py", "deploys/ollama.py")
    assert "[@local] servekit: Ollama settings from the inventory's servekit host data" in (
        done.stderr
    )


def test_at_local_names_the_fleet_file_it_read(tmp_path: Path) -> None:
    by_data = fleet_file(tmp_path / "data.py", "from-data", "qwen2.5:0.5b")
    by_env = fleet_file(tmp_path / "env.py", "from-env", "tinyllama")
    done = dry_run("@local", "deploys/ollama.py", "--data", f"servekit_fleet={by_data}",
                   env={"SERVEKIT_FLEET": str(by_env)})  # fmt: skip
    assert (
        f"Ollama settings from {by_data} (--data servekit_fleet; fleet 'from-data', "
        "machine 'local')"
    ) in done.stderr
    done = dry_run("@local", "deploys/ollama.py", env={"SERVEKIT_FLEET": str(by_env)})
    assert f"Ollama settings from {by_env} ($SERVEKIT_FLEET; fleet 'from-env'," in done.stderr


def test_at_local_falls_back_to_the_laptop_inventory() -> None:
    done = dry_run("@local", "deploys/ollama.py")
    laptop = ROOT / "inventories" / "laptop.py"
    assert (
        f"Ollama settings from {laptop} (the deploy's default fleet file; fleet 'laptop', "
        "machine 'local')"
    ) in done.stderr
