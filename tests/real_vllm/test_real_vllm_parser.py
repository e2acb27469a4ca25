"""Every vLLM config servekit renders parses with the real vLLM 0.33.0's own `vllm serve` argument
parser and passes its validation (`VLLM_TARGET_DEVICE=cpu`, no GPU needed): the example
inventories and fleets that exercise every rendering path (models sharing a node, native
multi-node, Ray, each weights source, pinned revision, FP8 KV cache, AWQ)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from servekit.inventory import load_fleet
from servekit.placement import NodeAddress, plan_fleet
from servekit.render import render_host
from servekit.spec import (
    Fleet,
    Gpu,
    HuggingFace,
    LocalPath,
    S3Bucket,
    SecretRef,
    Serve,
    Sources,
    SshHost,
)

pytestmark = pytest.mark.real_vllm

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.33.0"
VENV = Path(
    os.environ.get("SERVEKIT_REAL_VLLM_VENV", f"/var/cache/servekit-real-vllm/venv-{VERSION}")
)
PARSE = Path(__file__).with_name("parse_configs.py")
KEY = SecretRef(env="K")
HF = Sources(weights=HuggingFace(token=SecretRef(env="HF")))


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The real vLLM's interpreter, installed once (PIP_CONFIG_FILE=/dev/null: no local caps)."""
    python = VENV / "bin" / "python"
    installed = list((VENV / "lib").glob(f"python3*/site-packages/vllm-{VERSION}.dist-info"))
    if not installed:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"vllm=={VERSION}"],
            check=True,
            env={**os.environ, "PIP_CONFIG_FILE": "/dev/null"},
            timeout=1800,
        )
    return python


def _machines(count: int, gpus: int, gpu: str = "H100") -> list[SshHost]:
    return [
        SshHost(name=f"n{i}", address=f"10.7.0.{10 + i}", gpu=Gpu(model=gpu, count=gpus))
        for i in range(count)
    ]


def fleets() -> dict[str, Fleet]:
    found = {p.stem: load_fleet(p) for p in sorted((ROOT / "inventories").glob("*.py"))}
    prod = found["prod"].model_dump()
    prod["serve"] = [{**s, "nodes_per_replica": 2} for s in prod["serve"]]
    found["prod-tp8-pp2"] = Fleet(**prod)
    found["shared-node"] = Fleet(
        name="shared",
        machines=_machines(1, 4, "L40S"),
        serve=[
            Serve(model="llama-3.1-8b-instruct", gpus_per_replica=1, replicas=2, max_num_seqs=64),
            Serve(model="qwen2.5-14b-instruct", gpus_per_replica=2, port=8100, revision="cf98f3b"),
        ],
        engine_api_key=KEY,
        sources=HF,
    )
    found["ray"] = Fleet(
        name="ray",
        machines=_machines(2, 8),
        serve=[
            Serve(
                model="llama-3.1-405b-instruct",
                nodes_per_replica=2,
                quantization="none",
                max_model_len=32768,
                distributed_backend="ray",
            )
        ],
        engine_api_key=KEY,
        sources=Sources(weights=S3Bucket(bucket="models", prefix="hf")),
    )
    found["fp8-kv-local"] = Fleet(
        name="fp8",
        machines=_machines(1, 1),
        serve=[Serve(model="llama-3.1-8b-instruct", kv_cache_dtype="fp8", dtype="bfloat16")],
        engine_api_key=KEY,
        sources=Sources(weights=LocalPath(path="/mnt/models")),
    )
    found["awq"] = Fleet(
        name="awq",
        machines=_machines(1, 1, "A100-80GB"),
        serve=[Serve(model="llama-3.1-70b-instruct")],
        engine_api_key=KEY,
        sources=HF,
    )
    return found


def rendered_configs(out: Path) -> dict[Path, dict[str, object]]:
    configs = {}
    for label, fleet in fleets().items():
        addresses = {
            name: NodeAddress(public=f"203.0.113.{10 + i}", private=f"10.8.0.{10 + i}")
            for i, name in enumerate(fleet.host_names())
        }
        for host in plan_fleet(fleet, addresses).hosts.values():
            for file in render_host(host):
                if file.path.endswith(".yaml"):
                    path = out / label / host.name / Path(file.path).name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(file.content)
                    configs[path] = yaml.safe_load(file.content)
    return configs


def parse(python: Path, paths: list[Path]) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [str(python), str(PARSE), *map(str, paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_LOGGING_LEVEL": "ERROR"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    result: dict[str, dict[str, object]] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_every_rendered_config_parses_with_vllms_own_parser(
    vllm_python: Path, tmp_path: Path
) -> None:
    configs = rendered_configs(tmp_path)
    assert len(configs) >= 12
    results = parse(vllm_python, list(configs))
    failures = {p: r["error"] for p, r in results.items() if not r["ok"]}
    assert failures == {}
    for path, config in configs.items():
        args = results[str(path)]["args"]
        assert isinstance(args, dict)
        for key, value in config.items():
            name = key.replace("-", "_")
            if name in args:
                assert args[name] == value, (path, key)
    awq = yaml.safe_load(next(tmp_path.glob("awq/*/*.yaml")).read_text())
    assert "AWQ" in str(awq["model"]).upper()
    assert awq.get("quantization") in (None, "awq_marlin")  # never the slow `awq` kernel


def test_vllms_parser_rejects_what_it_does_not_know(vllm_python: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('model: "m"\ntensor-paralel-size: 2\n')
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text('model: "m"\ntensor-parallel-size: "eight"\n')
    results = parse(vllm_python, [bad, wrong])
    assert not results[str(bad)]["ok"] and not results[str(wrong)]["ok"]
