"""Moving a model from Ollama to vLLM in one fleet keeps its clients working: the catalog maps the
Ollama tag to the Hugging Face model, vLLM answers to the tag as a served name on the same
OpenAI-compatible path, and the gateway routes the same model name to the new engine.

The last test runs both stand-in engines from what servekit renders and sends them the same client
request."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from standins import harness

from servekit import catalog
from servekit.catalog import ModelInfo
from servekit.errors import FleetError
from servekit.placement import FleetPlan, plan_fleet
from servekit.render import render_host
from servekit.spec import (
    Fleet,
    Gateway,
    Gpu,
    HuggingFace,
    SecretRef,
    Serve,
    Sources,
    SshHost,
)

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "tests" / "standins"
FLAGS = json.loads((ROOT / "tests/data/vllm-0.33.0-flags.json").read_text())["flags"]
LONG_FLAGS = {name for flag in FLAGS for name in flag["names"] if name.startswith("--")}
TAG, HF_ID = "llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct"


def catalog_only(model: str, fleet: Fleet) -> ModelInfo:
    """The planner's resolver without the Hub: tests never reach the network."""
    found = catalog.find_model(model)
    if found is None:
        raise catalog.CatalogError(f"{model} is not in the catalog")
    return found


def team(
    engine: Literal["ollama", "vllm"], model: str = TAG, gpu: str = "A100-80GB", **serve: Any
) -> Fleet:
    return Fleet(
        name="team",
        machines=[
            SshHost(name="gpu1", address="10.0.0.5", gpu=Gpu(model=gpu)),
            SshHost(name="gw", address="10.0.0.2"),
        ],
        serve=[Serve(model=model, engine=engine, hosts=["gpu1"], **serve)],
        gateway=Gateway(host="gw", api_keys=SecretRef(file="~/.config/team/keys")),
        engine_api_key=SecretRef(file="~/.config/team/engine.key"),
        sources=Sources(weights=HuggingFace(token=SecretRef(file="~/.config/hf-token"))),
    )


def plan(
    engine: Literal["ollama", "vllm"], model: str = TAG, gpu: str = "A100-80GB", **serve: Any
) -> FleetPlan:
    return plan_fleet(team(engine, model, gpu, **serve), resolve=catalog_only)


def vllm_config(fleet_plan: FleetPlan) -> dict[str, Any]:
    (config,) = [f for f in render_host(fleet_plan.hosts["gpu1"]) if f.path.endswith(".yaml")]
    loaded: dict[str, Any] = yaml.safe_load(config.content)
    return loaded


def test_the_switch_keeps_the_model_name_clients_use() -> None:
    before, after = plan("ollama"), plan("vllm")
    (ollama_serve,) = before.serves
    (vllm_serve,) = after.serves
    assert ollama_serve.served_names == [TAG]
    assert vllm_serve.served_names[0] == TAG  # vLLM reports the first name: the Ollama tag
    assert HF_ID in vllm_serve.served_names
    assert ollama_serve.name == vllm_serve.name  # the same served model, another engine

    routes_before = {r.model: r for r in before.hosts["gw"].gateway.routes}  # type: ignore[union-attr]
    routes_after = {r.model: r for r in after.hosts["gw"].gateway.routes}  # type: ignore[union-attr]
    assert (routes_before[TAG].engine, routes_before[TAG].upstreams) == (
        "ollama",
        ["10.0.0.5:11434"],
    )
    assert (routes_after[TAG].engine, routes_after[TAG].upstreams) == ("vllm", ["10.0.0.5:8000"])

    gpu1 = after.hosts["gpu1"]
    assert gpu1.ollama is None and "ollama" not in gpu1.roles  # Ollama's files go with it
    (instance,) = gpu1.vllm
    assert instance.checkpoint == HF_ID
    assert instance.served_names[0] == TAG


def test_the_rendered_vllm_config_answers_to_the_ollama_tag() -> None:
    config = vllm_config(plan("vllm"))
    assert config["model"] == HF_ID
    assert config["served-model-name"][0] == TAG
    assert config["max-model-len"] == catalog.find_model(TAG).max_context  # type: ignore[union-attr]
    for key in config:
        assert f"--{key}" in LONG_FLAGS, f"--{key} is not a vLLM 0.33.0 flag"


def test_the_ollama_tag_stays_first_beside_extra_names_and_a_quantized_checkpoint() -> None:
    extra = plan("vllm", served_names=["llama3.1", "llama3.1:latest"])
    (serve,) = extra.serves
    assert serve.served_names[:4] == [TAG, HF_ID, "llama3.1", "llama3.1:latest"]
    small = plan("vllm", gpu="T4")  # 16 GB: the AWQ checkpoint
    (quantized,) = small.serves
    assert quantized.served_names[0] == TAG
    assert (
        quantized.plan.checkpoint != HF_ID and quantized.plan.checkpoint in quantized.served_names
    )


def test_a_tag_the_catalog_does_not_map_stops_with_the_field_and_the_fix() -> None:
    with pytest.raises(FleetError) as raised:
        plan("vllm", model="llama3.1:8b-instruct-q4_K_M")
    assert raised.value.fields == ["serve[0].model"]
    assert "catalog" in str(raised.value)


@pytest.fixture
def engines(tmp_path: Path) -> Any:
    """The stand-in Ollama holding the tag, and the stand-in vLLM run from the rendered config."""
    rendered = tmp_path / "llama.yaml"
    rendered.write_text(yaml.safe_dump(vllm_config(plan("vllm"))))
    ollama_port, vllm_port = harness.free_port(), harness.free_port()
    ollama_env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    ollama_env.update(
        HOME=str(tmp_path),
        OLLAMA_HOST=f"127.0.0.1:{ollama_port}",
        OLLAMA_STANDIN_TTFT="0",
        OLLAMA_STANDIN_TOKENS_PER_S="0",
    )
    ollama_argv = [sys.executable, str(STANDINS / "ollama" / "bin" / "ollama"), "serve"]
    vllm_argv = harness.vllm_argv(
        "serve", "--config", str(rendered), "--host", "127.0.0.1", "--port", str(vllm_port)
    )
    vllm_env = harness.vllm_env(VLLM_API_KEY="engine-key", VLLM_STANDIN_TOKENS_PER_S="0")
    with (
        harness.running(ollama_argv, ollama_env, tmp_path, "ollama", ready_log="Listening on"),
        harness.running(vllm_argv, vllm_env, tmp_path, "vllm", ready_log="startup complete"),
    ):
        status, _h, body = harness.request(ollama_port, "POST", "/api/pull", {"model": TAG})
        assert status == 200 and b'"success"' in body
        harness.wait_http(vllm_port)
        yield ollama_port, vllm_port


def test_the_same_client_request_works_on_both_engines(engines: tuple[int, int]) -> None:
    request = {
        "model": TAG,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
    }
    client_headers = {"Authorization": "Bearer engine-key"}  # Ollama ignores it, vLLM needs it
    for port in engines:
        status, _h, body = harness.request(
            port, "POST", "/v1/chat/completions", request, headers=client_headers
        )
        assert status == 200, body
        answer = json.loads(body)
        assert answer["model"] == TAG
        assert answer["choices"][0]["message"]["content"]
        status, _h, body = harness.request(port, "GET", "/v1/models", headers=client_headers)
        assert status == 200 and json.loads(body)["data"][0]["id"] == TAG

    ollama_port, vllm_port = engines
    # What changes for clients: Ollama's own API is gone, and vLLM wants the key.
    assert harness.request(ollama_port, "GET", "/api/tags")[0] == 200
    assert harness.request(vllm_port, "GET", "/api/tags")[0] == 404
    assert harness.request(vllm_port, "POST", "/v1/chat/completions", request)[0] == 401


def test_a_machine_that_serves_nothing_any_more_stays_in_the_inventory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After a move, the Ollama box serves nothing: it must still be a pyinfra host (in the
    `ollama` group), or `deploys/ollama.py` could never stop the Ollama it left running."""
    from servekit.inventory import pyinfra_groups

    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in [
        (".config/team/keys", "alice sk-alice-0123456789abcdef"),
        (".config/team/engine.key", "sk-engine-0123456789abcdef"),
        (".config/hf-token", "hf_0123456789abcdef"),
    ]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        path.chmod(0o600)
    fleet = team("vllm").model_copy(
        update={"machines": [*team("vllm").machines, SshHost(name="box", address="10.0.0.7")]}
    )
    groups = pyinfra_groups(fleet)
    assert [name for name, _data in groups.ollama] == ["box"]
    assert "box" not in [name for group in groups[:2] + groups[3:] for name, _data in group]
