"""What to benchmark: a URL, or the endpoints a fleet's inventory declares; and what answers there.

From an inventory, the gateway is preferred (it is what clients use), else an engine: a vLLM
server instance or an Ollama host, with the API key the fleet gives it. For a URL, the engine is
recognised by its version route (vLLM: `GET /version`, Ollama: `GET /api/version`), and vLLM's
`/metrics` tells whether prefix caching is on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import httpx

from servekit.hostplan import HostPlan, SecretSource
from servekit.placement import FleetPlan
from servekit.secrets import SecretError, read_secret

Engine = Literal["vllm", "ollama", "unknown"]
Via = Literal["auto", "gateway", "engine"]


class TargetError(RuntimeError):
    """The target cannot be benchmarked; the message says why and what to do."""


@dataclass(frozen=True)
class Resolved:
    """A reachable OpenAI-compatible endpoint and what is known about it."""

    base_url: str
    model: str | None
    api_key: str | None
    engine: Engine = "unknown"
    label: str | None = None
    host: str | None = None
    gpu: str | None = None
    decode_ceiling: float | None = None
    fleet: str | None = None
    prometheus_url: str | None = None
    """The fleet's Prometheus (from this machine): the result links the run's time range."""


def base_url(url: str) -> str:
    """`http://h:8000/v1/` → `http://h:8000` (servekit adds the API paths itself)."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        url = "http://" + url
    return url.removesuffix("/v1").rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reach_url(host: HostPlan, bind: str, port: int, what: str) -> str:
    """The URL this machine uses to reach a service bound to `bind` on `host`."""
    if host.connection == "local":
        address = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
        return f"http://{address}:{port}"
    if host.address is None:
        raise TargetError(
            f"{host.name} has no address yet: run `servekit cloud apply` on this inventory first"
        )
    if _is_loopback(bind):
        raise TargetError(
            f"{what} on {host.name} listens on {bind}:{port} (loopback only): reach it through "
            f"an SSH tunnel (`ssh -N -L {port}:{bind}:{port} {host.address}`) and benchmark "
            f"http://127.0.0.1:{port}, or benchmark the gateway"
        )
    address = host.address if bind in ("0.0.0.0", "::") else bind
    return f"http://{address}:{port}"


def _key(source: SecretSource | None) -> str | None:
    if source is None:
        return None
    try:
        return read_secret(source)
    except SecretError as error:
        raise TargetError(f"API key: {error}") from None


Ceiling = Callable[[str], tuple[str | None, float | None]]
"""A served name's GPU and the planner's decode ceiling (tokens/s) on it; (None, None) if none."""


def from_fleet(
    plan: FleetPlan, model: str | None, via: Via = "auto", host_name: str | None = None
) -> Resolved:
    """The endpoint to benchmark in a planned fleet (see the module docstring for the order)."""
    hosts = [h for h in plan.hosts.values() if host_name is None or h.name == host_name]
    if host_name is not None and not hosts:
        raise TargetError(f"no host {host_name!r} in fleet {plan.fleet}: {', '.join(plan.hosts)}")
    ceiling = _ceilings(plan)
    candidates: list[Resolved] = []
    if via in ("auto", "gateway"):
        candidates += _gateways(plan.fleet, hosts, model, ceiling)
    if not candidates and via in ("auto", "engine"):
        candidates += _engines(hosts, model, ceiling)
    if not candidates:
        what = f"model {model!r}" if model else "any model"
        raise TargetError(f"fleet {plan.fleet} has no {via} endpoint serving {what}")
    return candidates[0]


def _ceilings(plan: FleetPlan) -> Ceiling:
    ceilings = {
        name: (summary.plan.gpu, summary.plan.decode_tokens_per_s)
        for summary in plan.serves
        for name in summary.served_names
    }

    def ceiling(name: str) -> tuple[str | None, float | None]:
        gpu, tokens = ceilings.get(name, (None, None))
        if not tokens or gpu in (None, "cpu"):
            return None, None
        return gpu, tokens

    return ceiling


def _gateways(
    fleet: str, hosts: list[HostPlan], model: str | None, ceiling: Ceiling
) -> list[Resolved]:
    """Each gateway's first route (to `model` if given), with the gateway's API key."""
    candidates = []
    for host in hosts:
        if host.gateway is None:
            continue
        routes = [r for r in host.gateway.routes if model is None or r.model == model]
        for route in routes[:1]:
            gpu, tokens = ceiling(route.model)
            candidates.append(
                Resolved(
                    base_url=reach_url(host, "0.0.0.0", host.gateway.port, "the gateway"),
                    model=route.model,
                    api_key=_key(host.gateway.api_keys),
                    engine=route.engine if route.engine in ("vllm", "ollama") else "unknown",  # type: ignore[arg-type]
                    label=f"{fleet} gateway",
                    host=host.name,
                    gpu=gpu,
                    decode_ceiling=tokens,
                )
            )
    return candidates


def _engines(hosts: list[HostPlan], model: str | None, ceiling: Ceiling) -> list[Resolved]:
    """Each vLLM server instance and Ollama host that serves `model` (any model if None)."""
    candidates = []
    for host in hosts:
        for instance in host.vllm:
            if instance.role != "server":
                continue
            if model is not None and model not in instance.served_names:
                continue
            name = model or instance.served_names[0]
            gpu, tokens = ceiling(name)
            candidates.append(
                Resolved(
                    base_url=reach_url(host, instance.bind_address, instance.port, "vLLM"),
                    model=name,
                    api_key=_key(instance.secret_env.get("VLLM_API_KEY")),
                    engine="vllm",
                    label=f"vllm {host.name}",
                    host=host.name,
                    gpu=gpu,
                    decode_ceiling=tokens,
                )
            )
        if host.ollama is not None:
            tags = [t for t in host.ollama.models if model is None or t == model]
            if tags:
                bind, _, port = host.ollama.listen.rpartition(":")
                gpu, tokens = ceiling(tags[0])
                candidates.append(
                    Resolved(
                        base_url=reach_url(host, bind, int(port), "Ollama"),
                        model=tags[0],
                        api_key=None,
                        engine="ollama",
                        label=f"ollama {host.name}",
                        host=host.name,
                        gpu=gpu,
                        decode_ceiling=tokens,
                    )
                )
    return candidates


def read_key_file(path: Path) -> str:
    return read_secret(SecretSource(file=str(path)))


@dataclass(frozen=True)
class ServerInfo:
    engine: Engine
    version: str | None
    models: list[str]
    prefix_caching: bool | None


def _json(client: httpx.Client, url: str) -> object | None:
    try:
        response = client.get(url)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        body: object = response.json()
    except ValueError:
        return None
    return body


def inspect_server(resolved: Resolved, timeout_s: float = 10.0) -> ServerInfo:
    """Engine, version, served models and prefix caching, from the server's own routes."""
    headers = {"Authorization": f"Bearer {resolved.api_key}"} if resolved.api_key else {}
    base = resolved.base_url
    with httpx.Client(headers=headers, timeout=timeout_s) as client:
        try:
            client.get(base + "/v1/models")
        except httpx.HTTPError as error:
            raise TargetError(f"cannot reach {base}: {error}") from None
        engine: Engine = resolved.engine
        version = None
        ollama = _json(client, base + "/api/version")
        vllm = None if isinstance(ollama, dict) else _json(client, base + "/version")
        if isinstance(ollama, dict) and "version" in ollama:
            engine, version = "ollama", str(ollama["version"])
        elif isinstance(vllm, dict) and "version" in vllm:
            engine, version = "vllm", str(vllm["version"])
        listing = _json(client, base + "/v1/models")
        models = []
        if isinstance(listing, dict) and isinstance(listing.get("data"), list):
            models = [str(m.get("id")) for m in listing["data"] if isinstance(m, dict)]
        prefix: bool | None = None
        if engine == "vllm":
            try:
                response = client.get(base + "/metrics")
                match = re.search(r'enable_prefix_caching="(\w+)"', response.text)
                if response.status_code == 200 and match:
                    prefix = match.group(1).lower() == "true"
            except httpx.HTTPError:
                pass
        elif engine == "ollama":
            prefix = True  # Ollama reuses a slot's KV cache for a matching prompt prefix
    return ServerInfo(engine=engine, version=version, models=models, prefix_caching=prefix)


def with_engine(resolved: Resolved, info: ServerInfo) -> Resolved:
    return replace(resolved, engine=info.engine if info.engine != "unknown" else resolved.engine)
