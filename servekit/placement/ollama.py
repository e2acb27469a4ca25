"""Placing an Ollama-served model: one Ollama server per host (one port), holding every Ollama
model of that host, and its settings (OLLAMA_* variables)."""

from __future__ import annotations

from servekit import catalog, planner
from servekit.errors import Problem
from servekit.hostplan import OllamaHost
from servekit.placement.state import LOOPBACK, PlacementState, ServeSummary
from servekit.spec import Serve


def ollama_tag(serve: Serve) -> str:
    """The Ollama tag to pull: a catalog model's tag when given its Hugging Face id."""
    model = catalog.find_model(serve.model)
    return catalog.normalise_ollama_tag(
        model.ollama_tag if model and model.ollama_tag and "/" in serve.model else serve.model
    )


def plan_ollama(state: PlacementState, index: int, serve: Serve) -> None:
    """Plan one Ollama-served model on each of its hosts; problems go to `state.problems`."""
    fleet, settings = state.fleet, state.fleet.ollama
    model = catalog.find_model(serve.model)
    tag = ollama_tag(serve)
    plans = []
    hosts = fleet.hosts_of(serve)
    for host in hosts:
        gpu = state.gpu_of(host)
        plan = planner.plan_ollama(
            model,
            tag,
            gpu.info if gpu else None,
            gpu.count if gpu else 0,
            gpu.memory_gib if gpu else None,
            settings.context_length,
            settings.num_parallel,
            settings.kv_cache_type,
        )
        _add_model(state, index, serve, host, tag, plan)
        plans.append(plan)
    if plans:
        state.summaries.append(
            ServeSummary(
                name=fleet.serve_name(index),
                engine="ollama",
                plan=plans[0],
                replicas=[[h] for h in hosts],
                port=serve.engine_port,
                served_names=[tag],
                cost_usd_hour=state.cost(hosts),
            )
        )


def _add_model(
    state: PlacementState, index: int, serve: Serve, host: str, tag: str, plan: planner.ModelPlan
) -> None:
    """Put the model on the host's one Ollama server (claiming its port)."""
    host_state = state.hosts[host]
    if host_state.ollama_port not in (None, serve.engine_port):
        state.problems.append(
            Problem(
                f"serve[{index}].port",
                f"one Ollama server on {host!r} already listens on {host_state.ollama_port}",
                "use the same port for every Ollama model of a host",
            )
        )
    host_state.ollama_port = serve.engine_port
    state.claim_port(host, serve.engine_port, "ollama", f"serve[{index}].port", engine="ollama")
    if tag not in host_state.ollama_models:
        host_state.ollama_models.append(tag)
        host_state.ollama_plans.append(plan)


def ollama_host(state: PlacementState, host: str) -> OllamaHost | None:
    """The host's Ollama server (None when it serves no Ollama model)."""
    host_state = state.hosts[host]
    if not host_state.ollama_models:
        return None
    settings = state.fleet.ollama
    # a gateway on another host routes to it: listen where it reaches us (the firewall admits
    # only the gateway and monitoring hosts, and declared clients); else loopback unless exposed
    gateway = state.gateway_host()
    behind_gateway = gateway is not None and gateway != host
    bind = state.bind_address(host) if settings.expose or behind_gateway else LOOPBACK
    env = ollama_env(state, host, f"{bind}:{host_state.ollama_port}")
    order = ollama_hosts(state)
    return OllamaHost(
        version=state.fleet.versions.ollama,
        listen=env["OLLAMA_HOST"],
        env=env,
        models=host_state.ollama_models,
        prune=settings.prune,
        plans=host_state.ollama_plans,
        wave=order.index(host) if gateway else 0,
        waves=len(order) if gateway else 0,
    )


def ollama_hosts(state: PlacementState) -> list[str]:
    """The fleet's Ollama hosts in fleet order: the order rollouts restart them in."""
    return [name for name in state.fleet.host_names() if state.hosts[name].ollama_models]


def ollama_env(state: PlacementState, host: str, listen: str) -> dict[str, str]:
    """The OLLAMA_* variables of the host's server, from the fleet's OllamaSettings."""
    settings = state.fleet.ollama
    machine = state.fleet.machine_of(host)
    env = {
        "OLLAMA_HOST": listen,
        "OLLAMA_MODELS": settings.models_dir
        or ("~/.ollama/models" if machine.os == "macos" else "/var/lib/ollama/models"),
        "OLLAMA_KEEP_ALIVE": settings.keep_alive,
        "OLLAMA_NUM_PARALLEL": str(settings.num_parallel),
        "OLLAMA_MAX_LOADED_MODELS": str(settings.max_loaded_models),
        "OLLAMA_KV_CACHE_TYPE": settings.kv_cache_type,
        "OLLAMA_NO_CLOUD": "1",
    }
    if settings.flash_attention is not None:
        env["OLLAMA_FLASH_ATTENTION"] = "1" if settings.flash_attention else "0"
    if settings.context_length:
        env["OLLAMA_CONTEXT_LENGTH"] = str(settings.context_length)
    if settings.origins:
        env["OLLAMA_ORIGINS"] = ",".join(settings.origins)
    return env
