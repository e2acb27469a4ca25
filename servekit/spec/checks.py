"""Cross-field rules of a Fleet that no single field can express."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from servekit import catalog
from servekit.errors import Problem
from servekit.spec.machines import AwsNodeGroup, LocalHost
from servekit.spec.sources import HuggingFace

if TYPE_CHECKING:
    from servekit.spec.fleet import Fleet
    from servekit.spec.serving import Serve


def check_fleet(fleet: Fleet) -> list[Problem]:
    """Cross-field rules a single field cannot express, in the order they are reported."""
    problems = _unique_machines(fleet)
    for index, serve in enumerate(fleet.serve):
        problems += _check_serve(fleet, index, serve)
    problems += _unique_serve_names(fleet)
    for field, service in (("gateway", fleet.gateway), ("monitoring", fleet.monitoring)):
        if service is not None:
            problems += _unknown_machine(fleet, f"{field}.host", service.host)
    problems += _check_security(fleet)
    return problems


def _unique_machines(fleet: Fleet) -> list[Problem]:
    """Every machine and node has its own name, and @local is declared once."""
    problems: list[Problem] = []
    machine_names = [m.name for m in fleet.machines]
    node_names = [n for m in fleet.machines if isinstance(m, AwsNodeGroup) for n in m.node_names()]
    for name, count in Counter(machine_names + node_names).items():
        if count > 1:
            problems.append(
                Problem("machines", f"name {name!r} is used twice", "give every machine its name")
            )
    if sum(isinstance(m, LocalHost) for m in fleet.machines) > 1:
        problems.append(Problem("machines", "more than one LocalHost", "declare @local once"))
    return problems


def _unknown_machine(fleet: Fleet, field: str, ref: str) -> list[Problem]:
    """A reference to a machine (or node) the fleet does not declare."""
    machine_names = [m.name for m in fleet.machines]
    if ref in fleet.host_names() or ref in machine_names:
        return []
    return [Problem(field, f"no machine named {ref!r}", f"use one of {', '.join(machine_names)}")]


def _check_serve(fleet: Fleet, index: int, serve: Serve) -> list[Problem]:
    """A served model's hosts exist, can run its engine and hold a replica; its source fits."""
    field = f"serve[{index}]"
    unknown = [
        p for ref in serve.hosts or [] for p in _unknown_machine(fleet, f"{field}.hosts", ref)
    ]
    if unknown:
        return unknown
    problems: list[Problem] = []
    hosts = fleet.hosts_of(serve)
    if not hosts:
        problems.append(
            Problem(
                f"{field}.hosts",
                "no machine can run it (vLLM needs NVIDIA GPUs)",
                "declare a machine with gpu=Gpu(...), or use engine='ollama'",
            )
        )
    if serve.engine == "vllm":
        problems += _vllm_hosts(fleet, field, hosts)
    if serve.nodes_per_replica > 1 and len(hosts) < serve.nodes_per_replica:
        problems.append(
            Problem(
                f"{field}.nodes_per_replica",
                f"a replica needs {serve.nodes_per_replica} nodes, {len(hosts)} available",
                "add machines or lower nodes_per_replica",
            )
        )
    return problems + _check_model_source(fleet, serve, field)


def _vllm_hosts(fleet: Fleet, field: str, hosts: list[str]) -> list[Problem]:
    """vLLM runs on Linux hosts with NVIDIA GPUs only."""
    problems: list[Problem] = []
    for host in hosts:
        gpu = fleet.gpu_of(host)
        if gpu is None or gpu.info.apple:
            problems.append(
                Problem(
                    f"{field}.engine",
                    f"vLLM needs NVIDIA GPUs and {host!r} declares "
                    + ("Apple silicon" if gpu else "none"),
                    f"declare gpu=Gpu(...) on {host!r}, or use engine='ollama' there",
                )
            )
        if fleet.machine_of(host).os == "macos":
            problems.append(
                Problem(
                    f"{field}.engine",
                    f"vLLM does not run on macOS ({host!r})",
                    "use engine='ollama' on Macs",
                )
            )
    return problems


def _unique_serve_names(fleet: Fleet) -> list[Problem]:
    names = [fleet.serve_name(i) for i in range(len(fleet.serve))]
    return [
        Problem("serve", f"two served models are named {name!r}", "give each a unique name")
        for name, count in Counter(names).items()
        if count > 1
    ]


def _check_model_source(fleet: Fleet, serve: Serve, field: str) -> list[Problem]:
    model = catalog.find_model(serve.model)
    if serve.engine == "ollama":
        if model is None and "/" in serve.model and not serve.model.startswith("hf.co/"):
            return [
                Problem(
                    f"{field}.model",
                    f"{serve.model!r} looks like a Hugging Face id; Ollama pulls library tags",
                    "use an Ollama tag such as 'llama3.1:8b' or 'hf.co/ORG/REPO-GGUF:Q4_K_M'",
                )
            ]
        return []
    weights = fleet.sources.weights
    if model and model.gated and isinstance(weights, HuggingFace) and weights.token is None:
        return [
            Problem(
                f"{field}.model",
                f"{model.hf_id} is gated on Hugging Face and the fleet has no token source",
                "accept the licence on huggingface.co, then set sources=Sources(weights="
                "HuggingFace(token=SecretRef(file='~/.config/hf-token'))); or serve from S3 or a "
                "local path",
            )
        ]
    return []


def _check_security(fleet: Fleet) -> list[Problem]:
    problems: list[Problem] = []
    has_vllm = any(s.engine == "vllm" for s in fleet.serve)
    if has_vllm and fleet.engine_api_key is None:
        problems.append(
            Problem(
                "engine_api_key",
                "vLLM would answer anyone who reaches its port",
                "set engine_api_key=SecretRef(file='~/.config/servekit/engine.key')",
            )
        )
    has_ollama = any(s.engine == "ollama" for s in fleet.serve)
    if has_ollama and fleet.ollama.expose and fleet.gateway is None:
        problems.append(
            Problem(
                "ollama.expose",
                "Ollama has no authentication: exposed without a gateway, anyone on the network "
                "can pull, delete and run models",
                "declare gateway=Gateway(...) in front of it, or keep expose=False (loopback)",
            )
        )
    return problems
