"""Ollama's service files as `servekit render` shows them and the deploy uploads them: the systemd
unit and its settings drop-in on Linux, the LaunchAgent plist on macOS (parsed with plistlib)."""

from __future__ import annotations

import configparser
import plistlib
from pathlib import Path

import pytest

from servekit.cli import app
from servekit.hostplan import HostPlan
from servekit.placement import plan_fleet
from servekit.render import HostFacts, ollama_files, render_host
from servekit.spec import (
    Fleet,
    Gateway,
    Gpu,
    LocalHost,
    OllamaSettings,
    SecretRef,
    Serve,
    SshHost,
)

ROOT = Path(__file__).resolve().parents[2]


def host_plan(
    os: str = "linux", settings: OllamaSettings | None = None, **fleet: object
) -> HostPlan:
    machine: object = (
        LocalHost(os="macos", gpu=Gpu(model="apple-m3-pro", memory_gib=36))
        if os == "macos"
        else SshHost(name="box", address="10.0.0.5", gpu=Gpu(model="L4"))
    )
    declared = Fleet(
        name="team",
        machines=[machine],  # type: ignore[list-item]
        serve=[
            Serve(model="llama3.1:8b", engine="ollama"),
            Serve(model="qwen2.5:7b", engine="ollama"),
        ],
        ollama=settings or OllamaSettings(),
        **fleet,  # type: ignore[arg-type]
    )
    (plan,) = plan_fleet(declared).hosts.values()
    return plan


def unit_sections(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def environment(dropin: str) -> dict[str, str]:
    values = {}
    for line in dropin.splitlines():
        if line.startswith("Environment="):
            assignment = line.removeprefix("Environment=")
            assert assignment.startswith('"') and assignment.endswith('"'), line
            key, _, value = assignment[1:-1].partition("=")
            values[key] = value
    return values


def test_linux_gets_our_unit_and_a_drop_in_with_the_settings() -> None:
    plan = host_plan(
        settings=OllamaSettings(
            keep_alive="-1",
            num_parallel=4,
            flash_attention=True,
            kv_cache_type="q8_0",
            context_length=16384,
            origins=["https://chat.example.com"],
        )
    )
    unit, dropin = ollama_files(plan, HostFacts())
    assert unit.path == "/etc/systemd/system/ollama.service" and unit.mode == "0644"
    assert dropin.path == "/etc/systemd/system/ollama.service.d/servekit.conf"
    assert environment(dropin.content) == {
        "OLLAMA_HOST": "127.0.0.1:11434",
        "OLLAMA_MODELS": "/var/lib/ollama/models",
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_NUM_PARALLEL": "4",
        "OLLAMA_MAX_LOADED_MODELS": "0",
        "OLLAMA_FLASH_ATTENTION": "1",
        "OLLAMA_KV_CACHE_TYPE": "q8_0",
        "OLLAMA_CONTEXT_LENGTH": "16384",
        "OLLAMA_ORIGINS": "https://chat.example.com",
        "OLLAMA_NO_CLOUD": "1",
    }
    assert plan.ollama is not None and environment(dropin.content) == plan.ollama.env

    service = unit_sections(unit.content)
    assert service["Service"]["ExecStart"] == "/usr/local/bin/ollama serve"
    assert service["Service"]["User"] == service["Service"]["Group"] == "ollama"
    assert service["Install"]["WantedBy"] == "multi-user.target"  # as Ollama's docs say
    assert 'Environment="OLLAMA_' not in unit.content  # settings live in the drop-in only


def test_the_unit_carries_nixos_hardening_with_gpu_devices_only() -> None:
    (unit, _dropin) = ollama_files(host_plan(), HostFacts())
    lines = set(unit.content.splitlines())
    for directive in (
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "DevicePolicy=closed",
        "DeviceAllow=char-nvidia-uvm rw",
        "DeviceAllow=char-nvidiactl rw",
        "DeviceAllow=char-kfd rw",
        "DeviceAllow=char-drm rw",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        'ReadWritePaths="/var/lib/ollama"',
        "UMask=0077",
    ):
        assert directive in lines, directive
    allowed = {line.split("=", 1)[1] for line in lines if line.startswith("DeviceAllow=")}
    # Without the host's /proc/devices: NVIDIA's groups of every driver branch (`nvidia` is
    # the GPUs themselves from 545 on: without it Ollama would fall back to the CPU).
    assert allowed == {
        "char-nvidia rw",
        "char-nvidiactl rw",
        "char-nvidia-frontend rw",
        "char-nvidia-uvm rw",
        "char-nvidia-caps rw",
        "char-nvidia-nvswitch rw",
        "char-nvidia-caps-imex-channels rw",
        "char-drm rw",
        "char-fb rw",
        "char-kfd rw",
        "/dev/dxg rw",
    }


def test_the_unit_allows_the_gpu_groups_the_host_registers() -> None:
    facts = HostFacts(char_devices=("mem", "nvidia", "nvidiactl", "nvidia-uvm", "drm"))
    (unit, _dropin) = ollama_files(host_plan(), facts)
    allowed = [line for line in unit.content.splitlines() if line.startswith("DeviceAllow=")]
    assert allowed[:3] == [
        "DeviceAllow=char-nvidia rw",
        "DeviceAllow=char-nvidiactl rw",
        "DeviceAllow=char-nvidia-uvm rw",
    ]
    assert "DeviceAllow=char-nvidia-frontend rw" not in allowed


@pytest.mark.parametrize(
    ("models_dir", "writable", "protect_home"),
    [
        ("/srv/ollama/models", 'ReadWritePaths="/var/lib/ollama" "/srv/ollama/models"', "yes"),
        ("/home/ml/ollama", 'ReadWritePaths="/var/lib/ollama" "/home/ml/ollama"', "no"),
    ],
)
def test_a_custom_models_dir_is_writable_and_visible(
    models_dir: str, writable: str, protect_home: str
) -> None:
    unit, dropin = ollama_files(
        host_plan(settings=OllamaSettings(models_dir=models_dir)), HostFacts()
    )
    assert writable in unit.content.splitlines()
    assert f"ProtectHome={protect_home}" in unit.content.splitlines()
    assert environment(dropin.content)["OLLAMA_MODELS"] == models_dir


def test_exposed_ollama_listens_where_the_gateway_reaches_it_and_loopback_otherwise() -> None:
    fleet = Fleet(
        name="team",
        machines=[
            SshHost(name="box", address="10.0.0.5", gpu=Gpu(model="L4")),
            SshHost(name="gw", address="10.0.0.2"),
        ],
        serve=[Serve(model="llama3.1:8b", engine="ollama", hosts=["box"])],
        ollama=OllamaSettings(expose=True),
        gateway=Gateway(host="gw", api_keys=SecretRef(file="/k")),
    )
    plans = plan_fleet(fleet).hosts
    (_unit, dropin) = ollama_files(plans["box"], HostFacts())
    assert environment(dropin.content)["OLLAMA_HOST"] == "10.0.0.5:11434"
    assert ollama_files(plans["gw"], HostFacts()) == []
    (_unit, private) = ollama_files(host_plan(), HostFacts())
    assert environment(private.content)["OLLAMA_HOST"] == "127.0.0.1:11434"


def test_the_macos_plist_parses_and_holds_the_settings() -> None:
    plan = host_plan("macos", OllamaSettings(keep_alive="1h", origins=["app://x"]))
    # The schema refuses '&' and '<' in an origin; the plist must still escape what it is given.
    assert plan.ollama is not None
    env = {**plan.ollama.env, "OLLAMA_ORIGINS": "app://x,a&b<c"}
    plan = plan.model_copy(update={"ollama": plan.ollama.model_copy(update={"env": env})})
    (plist,) = ollama_files(plan, HostFacts(home="/Users/alice"))
    assert plist.path == "/Users/alice/Library/LaunchAgents/com.servekit.ollama.plist"
    assert plist.user == "alice"
    agent = plistlib.loads(plist.content.encode())
    assert agent["Label"] == "com.servekit.ollama"
    assert agent["ProgramArguments"] == ["/Users/alice/.servekit/ollama/0.32.3/ollama", "serve"]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] is True
    assert agent["ProcessType"] == "Interactive"  # no background throttling of inference
    assert agent["StandardErrorPath"] == "/Users/alice/.ollama/logs/server.log"
    assert agent["WorkingDirectory"] == "/Users/alice"
    env = agent["EnvironmentVariables"]
    assert env["OLLAMA_MODELS"] == "/Users/alice/.ollama/models"  # launchd expands no `~`
    assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert env["OLLAMA_KEEP_ALIVE"] == "1h"
    assert env["OLLAMA_ORIGINS"] == "app://x,a&b<c"  # escaped in XML, intact once parsed
    assert env["OLLAMA_NO_CLOUD"] == "1"
    assert plan.ollama is not None
    assert set(env) == set(plan.ollama.env)


def test_render_review_shows_the_macos_home_as_a_placeholder() -> None:
    (plist,) = ollama_files(host_plan("macos"), HostFacts())
    assert plist.path == "<home>/Library/LaunchAgents/com.servekit.ollama.plist"
    agent = plistlib.loads(plist.content.encode())
    assert agent["EnvironmentVariables"]["OLLAMA_MODELS"] == "<home>/.ollama/models"


def test_render_host_writes_ollama_files_only_where_ollama_runs() -> None:
    with_ollama = render_host(host_plan())  # an L4 box: its GPU files come first
    assert [f.path for f in with_ollama][-2:] == [
        "/etc/systemd/system/ollama.service",
        "/etc/systemd/system/ollama.service.d/servekit.conf",
    ]
    vllm_only = Fleet(
        name="gpu",
        machines=[SshHost(name="g", address="10.0.0.9", gpu=Gpu(model="L4"))],
        serve=[Serve(model="qwen2.5-7b-instruct", engine="vllm")],
        engine_api_key=SecretRef(file="/k"),
    )
    (plan,) = plan_fleet(vllm_only).hosts.values()
    assert not [f for f in render_host(plan) if "ollama" in f.path]
    assert len([f for f in with_ollama if "ollama" in f.path]) == 2


def test_servekit_render_writes_the_laptops_unit(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["render", str(ROOT / "inventories/laptop.py"), str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written in (
        [
            "local/etc/systemd/system/ollama.service",
            "local/etc/systemd/system/ollama.service.d/servekit.conf",
        ],
        ["local/<home>/Library/LaunchAgents/com.servekit.ollama.plist"],  # run on a Mac
    )
