"""`servekit plan` and `servekit render` as a user runs them (the installed console script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = sorted((ROOT / "inventories").glob("*.py"))
SERVEKIT = shutil.which("servekit", path=str(Path(sys.executable).parent)) or "servekit"
REQUIRED = {
    "model",
    "gpu",
    "gpus",
    "tensor_parallel",
    "pipeline_parallel",
    "quantization",
    "weights_gib_per_gpu",
    "kv_cache_tokens",
    "max_concurrency",
    "decode_tokens_per_s",
}


def servekit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVEKIT_STATE_DIR": str(cwd / "no-cloud-state")}
    return subprocess.run(
        [SERVEKIT, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env
    )


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.stem)
def test_plan_every_example_inventory(inventory: Path) -> None:
    table = servekit("plan", str(inventory))
    assert table.returncode == 0, table.stderr
    assert "fleet" in table.stdout
    done = servekit("plan", str(inventory), "--json")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert records and all(set(r) >= REQUIRED for r in records)


def test_plan_prod_shows_cost_and_tp8() -> None:
    done = servekit("plan", "inventories/prod.py", "--json")
    (record,) = json.loads(done.stdout)
    assert record["tensor_parallel"] == 8 and record["replicas"] == 2
    assert record["cost_usd_hour"] > 0
    assert "$/h" in servekit("plan", "inventories/prod.py").stdout


def test_plan_fleet_table_states_the_kv_uncertainty() -> None:
    """Issue 16: the fleet table states the ± on its KV tokens, as the single plan does."""
    (record,) = json.loads(servekit("plan", "inventories/prod.py", "--json").stdout)
    wide = {**os.environ, "COLUMNS": "250", "SERVEKIT_STATE_DIR": str(ROOT / "no-cloud-state")}
    shown = subprocess.run(
        [SERVEKIT, "plan", "inventories/prod.py"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=wide,
    ).stdout
    assert f"{record['kv_cache_tokens']:,} ±5%" in shown


def test_plan_single_model_fits() -> None:
    done = servekit(
        "plan", "--model", "llama-3.1-70b-instruct", "--gpu", "A100-80GB", "--gpus", "8", "--json"
    )
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(done.stdout)
    assert record["tensor_parallel"] == 8 and record["quantization"] is None


def test_plan_single_model_refused_with_reason() -> None:
    done = servekit(
        "plan", "--model", "llama-3.1-70b-instruct", "--gpu", "A100-80GB", "--quantization", "none"
    )
    assert done.returncode == 1
    assert "131.42 GiB of weights" in done.stderr and "AWQ" in done.stderr


def test_plan_unknown_gpu_names_close_matches() -> None:
    done = servekit("plan", "--model", "llama-3.1-8b-instruct", "--gpu", "H100-SXM6")
    assert done.returncode == 1 and "did you mean" in done.stderr


def test_plan_needs_inventory_or_model() -> None:
    assert servekit("plan").returncode == 2


def test_plan_invalid_inventory_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from servekit.spec import Fleet, SshHost, Gpu, Serve, SecretRef\n"
        "fleet = Fleet(name='bad', machines=[SshHost(name='g', address='h', "
        "gpu=Gpu(model='T4'))], serve=[Serve(model='qwen2.5-72b-instruct')], "
        "engine_api_key=SecretRef(env='K'))\n"
        "from servekit.inventory import pyinfra_groups\n"
        "gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)\n"
    )
    done = servekit("plan", str(bad))
    assert done.returncode == 1
    assert "serve[0].model" in done.stderr and "fix:" in done.stderr


def test_render_writes_host_files(tmp_path: Path) -> None:
    done = servekit("render", "inventories/prod.py", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    config = tmp_path / "out/a100-1/etc/vllm/llama-3-1-70b-instruct.yaml"
    env = tmp_path / "out/a100-1/etc/vllm/llama-3-1-70b-instruct.env"
    assert config.is_file() and env.is_file()
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    assert "<secret from file ~/.config/servekit/prod/engine.key>" in env.read_text()


def _home_with_secrets(inventory: Path, home: Path) -> dict[str, str]:
    """An environment whose HOME holds every secret file the inventory names (mode 0600): pyinfra
    checks secrets when it loads an inventory, so the examples load where their secrets exist."""
    from servekit.inventory import load_fleet
    from servekit.secrets import secret_refs

    for _field, ref in secret_refs(load_fleet(inventory), ""):
        if ref.file is not None:
            path = home / str(ref.file).removeprefix("~/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("sk-test\n")
            path.chmod(0o600)
    return {**os.environ, "HOME": str(home)}


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.stem)
def test_pyinfra_debug_inventory_shows_groups_and_host_data(
    inventory: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pyinfra", str(inventory.relative_to(ROOT)), "debug-inventory"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=_home_with_secrets(inventory, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "--> Groups:" in output and '"servekit": {' in output
    if inventory.stem == "laptop":
        assert "ollama" in output
    else:
        assert "gpu, vllm" in output
        assert '"tensor-parallel-size"' in output
