"""Errors keep their position and their inventory line, and never become a traceback: nested
models, config.json files, Python mistakes in an inventory, rich markup in values."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from servekit.catalog import CatalogError
from servekit.catalog.hf_config import model_from_config, resolve_model
from servekit.cli import app
from servekit.errors import FleetError
from servekit.inventory import load_fleet
from servekit.placement import plan_fleet
from servekit.spec import (
    Fleet,
    Gpu,
    HuggingFace,
    SecretRef,
    Serve,
    Sources,
    SshHost,
)

HERE = Path(__file__).name
KEY = SecretRef(file="~/.config/servekit/engine.key")
TOKEN = Sources(weights=HuggingFace(token=SecretRef(file="~/.config/servekit/hf-token")))


def gpu_host(name: str = "gpu1", **extra: Any) -> SshHost:
    return SshHost(name=name, address="10.0.0.5", gpu=Gpu(model="A100-80GB"), **extra)


def build(**overrides: Any) -> Fleet:
    fields: dict[str, Any] = {
        "name": "t",
        "machines": [gpu_host()],
        "serve": [Serve(model="llama-3.1-8b-instruct")],
        "engine_api_key": KEY,
        "sources": TOKEN,
    }
    fields.update(overrides)
    return Fleet(**fields)


# --- nested positions ---------------------------------------------------------------------------


def test_a_nested_error_is_reported_at_its_position() -> None:
    with pytest.raises(FleetError) as caught:
        build(serve=[Serve(model="llama-3.1-8b-instruct"), Serve(model="qwen2.5-7b", port=0)])
    assert caught.value.fields == ["serve[1].port"]
    assert "Serve.port" not in str(caught.value)


def test_deeply_nested_errors_keep_their_whole_path() -> None:
    with pytest.raises(FleetError) as caught:
        build(
            machines=[
                gpu_host(),
                SshHost(name="gpu2", address="h", gpu=Gpu(model="A100-80GB", count=0)),
            ],
            sources=Sources(weights=HuggingFace(token=SecretRef(file="a", env="B"))),
        )
    assert caught.value.fields == ["machines[1].gpu.count", "sources.weights.token"]


def test_nested_errors_and_the_fleets_own_are_reported_together() -> None:
    with pytest.raises(FleetError) as caught:
        build(name="Bad Name", serve=[Serve(model="m", replicas=0)])
    assert set(caught.value.fields) == {"name", "serve[0].replicas"}


def test_dicts_are_checked_at_their_position_too() -> None:
    with pytest.raises(FleetError) as caught:
        build(serve=[{"model": "llama-3.1-8b-instruct", "port": 0}])
    assert caught.value.fields == ["serve[0].port"]


def test_a_spec_built_alone_fails_when_used() -> None:
    serve = Serve(model="m", port=0)  # no error yet: it may be going into a Fleet
    assert "invalid" in repr(serve)
    with pytest.raises(FleetError) as caught:
        _ = serve.port
    assert caught.value.fields == ["Serve.port"] and caught.value.problems[0].fix
    with pytest.raises(FleetError):
        _ = serve.model
    with pytest.raises(FleetError):
        serve.check()


def test_a_valid_spec_is_usable_and_equal_wherever_declared() -> None:
    first = Gpu(model="A100-80GB")
    second = Gpu(model="A100-80GB")
    first.check()
    assert first == second and first.count == 1
    assert first.declared_at.endswith(f"{HERE}:{sys._getframe().f_lineno - 4}")


def test_errors_name_the_line_that_declared_the_value() -> None:
    line = sys._getframe().f_lineno + 2
    with pytest.raises(FleetError) as caught:
        Fleet(
            name="t",
            machines=[gpu_host()],
            serve=[
                Serve(model="llama-3.1-8b-instruct", port=0),
            ],
        )
    problem = caught.value.problems[0]
    assert caught.value.where.endswith(f"{HERE}:{line}")
    assert problem.where.endswith(f"{HERE}:{line + 4}")
    assert f"declared at {caught.value.where}" in str(caught.value)


def test_plan_problems_are_positions_too() -> None:
    with pytest.raises(FleetError) as caught:
        plan_fleet(build(serve=[Serve(model="llama-3.1-8b-instruct", port=80)]))
    assert caught.value.fields == ["serve[0].port"]


# --- config.json --------------------------------------------------------------------------------

GOOD = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}


def test_a_good_config_still_works() -> None:
    assert model_from_config("x/y", GOOD).layers == 32


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"num_attention_heads": -8}, "num_attention_heads"),
        ({"num_hidden_layers": "32"}, "num_hidden_layers"),
        ({"vocab_size": 1.5}, "vocab_size"),
        ({"hidden_size": True}, "hidden_size"),
        ({"num_key_value_heads": 5}, "KV heads"),
        ({"num_key_value_heads": 64}, "KV heads"),
        ({"head_dim": [128]}, "head_dim"),
        ({"num_local_experts": -1}, "num_local_experts"),
        ({"max_position_embeddings": 10**30}, "max_position_embeddings"),
        ({"text_config": [1, 2]}, "text_config"),
        ({"text_config": {"hidden_size": 8}}, "num_attention_heads"),
    ],
)
def test_a_broken_config_is_a_catalog_error(change: dict[str, Any], word: str) -> None:
    config = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(CatalogError, match=word):
        model_from_config("x/y", config)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"', "[" * 100000])
def test_an_unreadable_config_file_is_a_catalog_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CatalogError):
        resolve_model(str(tmp_path))


def test_a_broken_config_becomes_a_problem_of_the_serve_entry(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**GOOD, "num_attention_heads": 0}))
    with pytest.raises(FleetError) as caught:
        plan_fleet(build(serve=[Serve(model=str(tmp_path))]))
    assert caught.value.fields == ["serve[0].model"]
    assert "num_attention_heads" in caught.value.problems[0].message


@pytest.mark.parametrize("model", ["~no-such-user-xyz/model", "a" * 5000])
def test_odd_model_names_are_catalog_errors(model: str) -> None:
    with pytest.raises(CatalogError):
        resolve_model(model, endpoint="http://127.0.0.1:9")


# --- inventories and the CLI --------------------------------------------------------------------

runner = CliRunner()

INVENTORY = """\
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, SecretRef, Serve, SshHost

fleet = Fleet(
    name="markup",
    machines=[SshHost(name="gpu1", address="10.0.0.5", gpu=Gpu(model="A100-80GB"))],
    serve=[Serve(model={model!r}, engine={engine!r})],
    engine_api_key=SecretRef(file="/nonexistent/key"),
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


def inventory(tmp_path: Path, model: str, engine: str = "vllm") -> str:
    path = tmp_path / "fleet.py"
    path.write_text(INVENTORY.format(model=model, engine=engine))
    return str(path)


@pytest.mark.parametrize("command", [["plan"], ["render"], ["cloud", "plan"]])
def test_markup_in_an_error_prints_as_is(tmp_path: Path, command: list[str]) -> None:
    args = [*command, inventory(tmp_path, "[/]x[bold]")]
    if command == ["render"]:
        args.append(str(tmp_path / "out"))
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "[/]x[bold]" in result.output


def test_markup_in_a_model_name_is_refused_and_printed_as_is(tmp_path: Path) -> None:
    """Model names are printable ASCII without brackets, so markup never reaches a plan table;
    the refusal itself prints the value as it was written."""
    result = runner.invoke(app, ["plan", inventory(tmp_path, "llama3.1:8b[bold]", "ollama")])
    assert result.exit_code == 1, result.output
    assert "serve[0].model" in result.output and "llama3.1:8b[bold]" in result.output


def test_markup_in_a_bench_error_prints_as_is() -> None:
    result = runner.invoke(app, ["bench", "http://127.0.0.1:9/[/]x", "--model", "m", "-q"])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "[/]x" in result.output


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("x = undefined_name\n", "NameError"),
        ("from servekit.spec import Serve\nServe(model='m', port=0).port\n", "FleetError"),
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('boom')\n", "RuntimeError"),
    ],
)
def test_python_mistakes_in_an_inventory_are_problems_at_their_line(
    tmp_path: Path, text: str, kind: str
) -> None:
    path = tmp_path / "inv.py"
    path.write_text("# an inventory\n" + text)
    with pytest.raises(FleetError) as caught:
        load_fleet(path)
    if kind == "FleetError":
        assert caught.value.fields == ["Serve.port"]
        return
    problem = caught.value.problems[0]
    assert problem.field == "inventory" and kind in problem.message and problem.fix
    assert f"{path}:2" in problem.message
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_dumping_an_invalid_spec_raises_its_problems() -> None:
    with pytest.raises(FleetError):
        Serve(model="m", port=0).model_dump()
    assert Serve(model="m").model_dump()["model"] == "m"
