"""Fleets that cannot work are refused at load time, each error naming the field and the fix,
and pyinfra never connects to a host of such a fleet."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from servekit.errors import FleetError
from servekit.placement import plan_fleet
from servekit.spec import (
    AwsNodeGroup,
    Fleet,
    Gateway,
    Gpu,
    HuggingFace,
    LocalHost,
    Monitoring,
    OllamaSettings,
    SecretRef,
    Serve,
    Sources,
    Spec,
    SshHost,
    Versions,
)

KEY = SecretRef(file="~/.config/servekit/engine.key")
TOKEN = Sources(weights=HuggingFace(token=SecretRef(file="~/.config/servekit/hf-token")))


def a100(name: str = "gpu1", count: int = 1, model: str = "A100-80GB", **extra: Any) -> SshHost:
    return SshHost(
        name=name, address=f"10.0.0.{len(name)}", gpu=Gpu(model=model, count=count), **extra
    )


def fleet(**overrides: Any) -> Fleet:
    """A valid one-GPU fleet, with the given fields replaced."""
    fields: dict[str, Any] = {
        "name": "test",
        "machines": [a100()],
        "serve": [Serve(model="llama-3.1-8b-instruct")],
        "engine_api_key": KEY,
        "sources": TOKEN,
    }
    fields.update(overrides)
    return Fleet(**fields)


def plan(**overrides: Any) -> None:
    plan_fleet(fleet(**overrides))


def aws(**extra: Any) -> AwsNodeGroup:
    fields: dict[str, Any] = {
        "name": "a100",
        "instance_type": "p4de.24xlarge",
        "count": 2,
        "region": "us-east-1",
        "ssh_key": "~/.ssh/k",
        "ssh_cidrs": ["203.0.113.0/24"],
    }
    fields.update(extra)
    return AwsNodeGroup(**fields)


# (case id, what to build, the field the error must name, a word the fix must contain)
INVALID: list[tuple[str, Callable[[], object], str, str]] = [
    (
        "tp-not-dividing-heads",
        lambda: plan(
            machines=[a100(count=8, model="A100-SXM4-40GB")],
            serve=[Serve(model="qwen2.5-7b-instruct", tensor_parallel=8)],
        ),
        "serve[0].tensor_parallel",
        "tensor_parallel",
    ),
    (
        "tp-times-pp-not-gpus",
        lambda: plan(
            machines=[a100(count=8)],
            serve=[Serve(model="llama-3.1-70b-instruct", tensor_parallel=4, pipeline_parallel=1)],
        ),
        "serve[0].tensor_parallel",
        "gpus_per_replica",
    ),
    (
        "model-too-large",
        lambda: plan(serve=[Serve(model="llama-3.1-70b-instruct", quantization="none")]),
        "serve[0].model",
        "TP=2",
    ),
    (
        "405b-on-one-node",
        lambda: plan(
            machines=[a100(count=8, model="H100")],
            serve=[Serve(model="llama-3.1-405b-instruct", quantization="none")],
        ),
        "serve[0].model",
        "nodes",
    ),
    (
        "context-too-long",
        lambda: plan(
            machines=[a100(model="L4")],
            serve=[Serve(model="llama-3.1-8b-instruct", max_model_len=131072, quantization="none")],
        ),
        "serve[0].max_model_len",
        "max_model_len=",
    ),
    (
        "awq-without-variant",
        lambda: plan(serve=[Serve(model="gemma-2-9b-it", quantization="awq")]),
        "serve[0].model",
        "fp8",
    ),
    (
        "unknown-gpu",
        lambda: fleet(machines=[SshHost(name="g", address="h", gpu=Gpu(model="A100-90GB"))]),
        "machines[0].gpu.model",
        "gpus.toml",
    ),
    (
        "unknown-model",
        lambda: plan(serve=[Serve(model="llama-9-13b")]),
        "serve[0].model",
        "models.toml",
    ),
    (
        "hf-model-without-config",
        lambda: plan(serve=[Serve(model="/nonexistent/model-dir")]),
        "serve[0].model",
        "config.json",
    ),
    (
        "port-clash-two-engines",
        lambda: plan(
            machines=[a100(count=2)],
            serve=[
                Serve(model="llama-3.1-8b-instruct", gpus_per_replica=1, replicas=1),
                Serve(model="qwen2.5-7b-instruct", gpus_per_replica=1, port=8000),
            ],
        ),
        "serve[1].port",
        "own port",
    ),
    (
        "port-clash-gateway",
        lambda: plan(gateway=Gateway(host="gpu1", port=8000, api_keys=KEY)),
        "gateway.port",
        "own port",
    ),
    (
        "port-clash-monitoring-vs-gateway",
        lambda: plan(
            gateway=Gateway(host="gpu1", port=9090, api_keys=KEY),
            monitoring=Monitoring(host="gpu1"),
        ),
        "monitoring.port",
        "own port",
    ),
    ("gated-without-token", lambda: fleet(sources=Sources()), "serve[0].model", "token"),
    (
        "ollama-multinode",
        lambda: Serve(model="llama3.1:8b", engine="ollama", nodes_per_replica=2),
        "Serve",
        "vllm",
    ),
    (
        "ollama-tensor-parallel",
        lambda: Serve(model="llama3.1:8b", engine="ollama", tensor_parallel=2),
        "Serve",
        "tensor_parallel",
    ),
    (
        "ollama-with-hf-id",
        lambda: fleet(serve=[Serve(model="someorg/some-model", engine="ollama")]),
        "serve[0].model",
        "Ollama tag",
    ),
    (
        "ollama-exposed-without-gateway",
        lambda: fleet(
            serve=[Serve(model="llama3.1:8b", engine="ollama")], ollama=OllamaSettings(expose=True)
        ),
        "ollama.expose",
        "gateway",
    ),
    ("negative-gpu-count", lambda: Gpu(model="A100-80GB", count=-1), "Gpu.count", "larger"),
    (
        "zero-replicas",
        lambda: Serve(model="llama-3.1-8b-instruct", replicas=0),
        "Serve.replicas",
        "larger",
    ),
    ("negative-node-count", lambda: aws(count=-2), "AwsNodeGroup.count", "larger"),
    (
        "bad-ssh-port",
        lambda: SshHost(name="g", address="h", ssh_port=70000),
        "SshHost.ssh_port",
        "smaller",
    ),
    (
        "unknown-field-typo",
        lambda: Serve(model="llama-3.1-8b-instruct", tensor_paralel=2),
        "Serve.tensor_paralel",
        "tensor_parallel",
    ),
    ("bad-name", lambda: fleet(name="Prod Fleet!"), "name", "lower-case"),
    ("duplicate-machine-names", lambda: fleet(machines=[a100(), a100()]), "machines", "name"),
    (
        "serve-on-unknown-host",
        lambda: fleet(serve=[Serve(model="llama-3.1-8b-instruct", hosts=["gpu9"])]),
        "serve[0].hosts",
        "gpu1",
    ),
    (
        "vllm-without-gpu",
        lambda: fleet(machines=[SshHost(name="cpu", address="h")]),
        "serve[0].hosts",
        "gpu",
    ),
    (
        "vllm-on-mac",
        lambda: fleet(
            machines=[LocalHost(os="macos", gpu=Gpu(model="apple-m3-max", memory_gib=64))],
            serve=[Serve(model="llama-3.1-8b-instruct", hosts=["local"])],
        ),
        "serve[0].engine",
        "ollama",
    ),
    ("apple-without-memory", lambda: Gpu(model="apple-m2-pro"), "Gpu", "memory_gib"),
    ("vllm-without-api-key", lambda: fleet(engine_api_key=None), "engine_api_key", "SecretRef"),
    ("secret-with-both-sources", lambda: SecretRef(file="a", env="B"), "SecretRef", "exactly one"),
    (
        "instance-type-without-gpu",
        lambda: aws(instance_type="m5.large"),
        "AwsNodeGroup",
        "aws.toml",
    ),
    ("aws-without-ssh-cidrs", lambda: aws(ssh_cidrs=[]), "AwsNodeGroup.ssh_cidrs", ""),
    (
        "multinode-more-than-hosts",
        lambda: fleet(
            machines=[a100(count=8)],
            serve=[Serve(model="llama-3.1-405b-instruct", nodes_per_replica=2)],
        ),
        "serve[0].nodes_per_replica",
        "machines",
    ),
    (
        "mixed-gpus-in-one-serve",
        lambda: plan(machines=[a100("g1"), a100("g2", model="H100")]),
        "serve[0].hosts",
        "identical",
    ),
    (
        "too-many-replicas",
        lambda: plan(serve=[Serve(model="llama-3.1-8b-instruct", replicas=3)]),
        "serve[0].replicas",
        "add machines",
    ),
    (
        "gpus-per-replica-over-node",
        lambda: plan(serve=[Serve(model="llama-3.1-8b-instruct", gpus_per_replica=2)]),
        "serve[0].gpus_per_replica",
        "nodes_per_replica",
    ),
    ("old-vulnerable-ollama", lambda: Versions(ollama="0.1.30"), "Versions", "0.17.1"),
    ("unknown-vllm-version", lambda: Versions(vllm="0.1.0"), "Versions", "versions.toml"),
    ("unknown-driver-branch", lambda: Versions(driver_branch=123), "Versions", "580"),
    (
        "gateway-on-unknown-host",
        lambda: fleet(gateway=Gateway(host="edge", api_keys=KEY)),
        "gateway.host",
        "gpu1",
    ),
    (
        "kv-q8-without-flash-attention",
        lambda: OllamaSettings(kv_cache_type="q8_0", flash_attention=False),
        "OllamaSettings",
        "flash_attention",
    ),
    (
        "engine-on-the-ssh-port",
        lambda: plan(
            machines=[a100(ssh_port=2222)], serve=[Serve(model="llama-3.1-8b-instruct", port=2222)]
        ),
        "serve[0].port",
        "another port",
    ),
    (
        "gateway-on-port-22",
        lambda: plan(gateway=Gateway(host="gpu1", port=22, api_keys=KEY)),
        "gateway.port",
        "another port",
    ),
    (
        "ssh-port-inside-ray-worker-range",
        lambda: plan(
            machines=[a100("g1", count=8, ssh_port=10022), a100("g2", count=8)],
            serve=[
                Serve(
                    model="llama-3.1-70b-instruct", nodes_per_replica=2, distributed_backend="ray"
                )
            ],
        ),
        "machines[0].ssh_port",
        "10002-19999",
    ),
    (
        "engine-inside-ray-worker-range",
        lambda: plan(
            machines=[a100("g1", count=8), a100("g2", count=8)],
            serve=[
                Serve(
                    model="llama-3.1-70b-instruct",
                    nodes_per_replica=2,
                    gpus_per_replica=4,
                    replicas=1,
                    distributed_backend="ray",
                ),
                Serve(model="llama-3.1-8b-instruct", gpus_per_replica=4, hosts=["g2"], port=15000),
            ],
        ),
        "serve[1].port",
        "own port",
    ),
    (
        "gateway-on-a-ray-fixed-port",
        lambda: plan(
            machines=[a100("g1", count=8), a100("g2", count=8)],
            serve=[
                Serve(
                    model="llama-3.1-70b-instruct", nodes_per_replica=2, distributed_backend="ray"
                )
            ],
            gateway=Gateway(host="g2", port=6381, api_keys=KEY),
        ),
        "gateway.port",
        "own port",
    ),
    (
        "engine-on-the-node-exporter-port",
        lambda: plan(
            serve=[Serve(model="llama-3.1-8b-instruct", port=9100)],
            monitoring=Monitoring(host="gpu1"),
        ),
        "serve[0].port",
        "own port",
    ),
    (
        "vllm-on-a-privileged-port",
        lambda: plan(serve=[Serve(model="llama-3.1-8b-instruct", port=443)]),
        "serve[0].port",
        "1024",
    ),
    (
        "ollama-on-a-privileged-port",
        lambda: plan(serve=[Serve(model="llama3.1:8b", engine="ollama", port=80)]),
        "serve[0].port",
        "1024",
    ),
    (
        "ray-on-single-node",
        lambda: Serve(model="llama-3.1-8b-instruct", distributed_backend="ray"),
        "Serve",
        "nodes_per_replica",
    ),
]


def test_at_least_25_invalid_fleets() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize(
    ("build", "field", "fix_word"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_fleet_names_field_and_fix(
    build: Callable[[], object], field: str, fix_word: str
) -> None:
    with pytest.raises(FleetError) as caught:
        built = build()
        # A Spec built on its own carries its problems and raises when used (servekit/spec/base.py).
        if isinstance(built, Spec):
            built.check()
    problems = caught.value.problems
    assert any(p.field.startswith(field) for p in problems), [str(p) for p in problems]
    matching = [p for p in problems if p.field.startswith(field)]
    assert all(p.fix for p in matching), [str(p) for p in matching]
    assert any(fix_word.lower() in p.fix.lower() for p in matching), [str(p) for p in matching]


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(FleetError) as caught:
        fleet(
            engine_api_key=None,
            sources=Sources(),
            serve=[Serve(model="llama-3.1-8b-instruct", hosts=["nope"])],
        )
    assert {"engine_api_key", "serve[0].hosts"} <= set(caught.value.fields)


class _Listener:
    """A TCP port that records whether anything connected to it (an SSH port never touched)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


INVENTORY = """
from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, SecretRef, Serve, SshHost, Sources, HuggingFace

fleet = Fleet(
    name="bad",
    machines=[SshHost(name="gpu1", address="127.0.0.1", ssh_port={port}, ssh_user="root",
                      gpu=Gpu(model="A100-80GB", count=1))],
    serve=[Serve(model="{model}", {extra})],
    engine_api_key={key},
    sources=Sources(weights=HuggingFace(token=SecretRef(file="/tmp/hf-token"))),
)
gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
"""


@pytest.mark.parametrize(
    ("model", "extra", "key", "expected"),
    [
        (
            "llama-3.1-70b-instruct",
            "quantization='none'",
            "SecretRef(file='/tmp/k')",
            "serve[0].model",
        ),
        (
            "qwen2.5-7b-instruct",
            "tensor_parallel=3",
            "SecretRef(file='/tmp/k')",
            "serve[0].tensor_parallel",
        ),
        ("llama-3.1-8b-instruct", "port=8000", "None", "engine_api_key"),
    ],
)
def test_pyinfra_stops_before_connecting(
    tmp_path: Path, model: str, extra: str, key: str, expected: str
) -> None:
    listener = _Listener()
    try:
        inventory = tmp_path / "bad.py"
        inventory.write_text(
            textwrap.dedent(INVENTORY).format(port=listener.port, model=model, extra=extra, key=key)
        )
        done = subprocess.run(
            [sys.executable, "-m", "pyinfra", "-y", str(inventory), "exec", "--", "true"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    finally:
        listener.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert expected in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Connecting to hosts" not in done.stderr + done.stdout
    assert listener.connections == 0


def test_ray_ports_have_one_home() -> None:
    from servekit import render, spec

    assert render.RAY_FIXED_PORTS is spec.RAY_FIXED_PORTS
    assert render.RAY_WORKER_PORTS == spec.RAY_WORKER_PORTS == (10002, 19999)


def test_ports_that_do_not_clash_are_accepted() -> None:
    plan(
        machines=[a100("g1", count=8, ssh_port=2222), a100("g2", count=8, ssh_port=20022)],
        serve=[
            Serve(model="llama-3.1-70b-instruct", nodes_per_replica=2, distributed_backend="ray")
        ],
        gateway=Gateway(host="g1", port=8443, api_keys=KEY),
        monitoring=Monitoring(host="g1"),
    )
    plan(serve=[Serve(model="llama-3.1-8b-instruct", port=1024)])
