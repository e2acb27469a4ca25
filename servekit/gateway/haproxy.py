"""The gateway's files: HAProxy's config (templates/haproxy.cfg.j2) and servekit's maps beside
it, from the host plan, the parsed client keys and the engines' key.

Every value from the plan reaches the config through `haproxy_word` (or `haproxy_secret` for the
engines' key), which refuses anything HAProxy would parse specially: spaces, quotes, `#`, `%`,
`\\`, `$`, braces. The maps hold no key, only its sha256.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from servekit.gateway.keys import ApiKey
from servekit.gateway.layout import GATEWAY, GatewayLayout
from servekit.hostplan import HostPlan, Route
from servekit.secrets import SecretError
from servekit.templating import RenderedFile, environment

WORD = re.compile(r"[A-Za-z0-9._:/@+=\[\]-]+")
MAP_WORD = re.compile(r"[\x21-\x7e]+")
MAP_REFUSED = set("#\\\"'%$")
SECRET = re.compile(r"[A-Za-z0-9._~+/=:-]{1,512}")
HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
HEALTH = {"vllm": "/health", "ollama": "/"}
BUFSIZE = 262144
MAX_BODY = BUFSIZE - 8192
"""The body bytes HAProxy reads to find "model" (the buffer, less headers; measured: 258,000
bytes route, 262,000 do not)."""
MAXCONN = 4096
PREFIX_BYTES = 256
"""prefix-affinity hashes this many bytes of the prompt's start (chat: the first message)."""
BALANCE_FACTOR = 150
"""prefix-affinity: no replica takes more than this percentage of the average requests in flight
(HAProxy's `hash-balance-factor`; its manual calls 125 to 200 reasonable)."""
MODE = "0640"


def haproxy_word(value: object) -> str:
    """One word of HAProxy's config, taken as is; ValueError for anything it parses specially."""
    text = str(value)
    if not WORD.fullmatch(text):
        raise ValueError(f"not a plain word for HAProxy's config: {text!r}")
    return text


def haproxy_secret(value: object) -> str:
    """The engines' key inside a double-quoted log-format string; the message never shows it."""
    if not SECRET.fullmatch(str(value)):
        raise SecretError(
            "engine_api_key: the gateway adds it in a header, so it must be 1 to 512 of "
            "A-Z a-z 0-9 . _ ~ + / = : -",
            "choose a key of those characters",
        )
    return str(value)


def map_word(value: str) -> str:
    """A model name as a map key or JSON-free comment: printable, no spaces, quotes or `#`."""
    if not MAP_WORD.fullmatch(value) or MAP_REFUSED & set(value):
        raise ValueError(f"model name not usable by the gateway: {value!r}")
    return value


def server_address(upstream: str) -> str:
    """`host:port` from the plan as HAProxy's server address (IPv6 in brackets)."""
    host, sep, port = upstream.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"gateway upstream {upstream!r}: expected host:port")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not HOST_NAME.fullmatch(host):
            raise ValueError(
                f"gateway upstream {upstream!r}: no address yet (cloud hosts get theirs at "
                "`servekit cloud apply`)"
            ) from None
        return f"{host}:{int(port)}"
    return f"[{address}]:{int(port)}" if address.version == 6 else f"{address}:{int(port)}"


def bind_address(value: str) -> str:
    """`*` (every address) or one IP address, as HAProxy's `bind` takes it."""
    if value == "*":
        return value
    address = ipaddress.ip_address(value)
    return f"[{address}]" if address.version == 6 else str(address)


@dataclass(frozen=True)
class Server:
    name: str
    address: str


@dataclass(frozen=True)
class Pool:
    """The replicas behind one or more model names (one backend)."""

    name: str
    engine: str
    health: str
    models: tuple[str, ...]
    servers: tuple[Server, ...]
    routing: str = "least-outstanding"


PoolKey = tuple[str, str, tuple[str, ...]]
"""engine, routing, upstreams: routes that share all three share a backend."""


def grouped_routes(routes: Iterable[Route]) -> dict[PoolKey, list[str]]:
    """Model names by (engine, routing, upstreams), in the plan's order."""
    grouped: dict[PoolKey, list[str]] = {}
    for route in routes:
        grouped.setdefault((route.engine, route.routing, tuple(route.upstreams)), []).append(
            route.model
        )
    return grouped


def pools(routes: Iterable[Route]) -> list[Pool]:
    """One backend per distinct (engine, routing, upstreams), in the plan's order."""
    found = []
    for number, ((engine, routing, upstreams), models) in enumerate(
        grouped_routes(routes).items(), 1
    ):
        if engine not in HEALTH:
            raise ValueError(f"gateway route {models[0]!r}: unknown engine {engine!r}")
        if routing == "prefix-affinity" and engine != "vllm":
            raise ValueError(f"gateway route {models[0]!r}: prefix-affinity is for vLLM pools")
        servers = tuple(
            Server(f"replica{index}", server_address(u)) for index, u in enumerate(upstreams, 1)
        )
        names = tuple(map_word(m) for m in models)
        found.append(Pool(f"pool{number}", engine, HEALTH[engine], names, servers, routing))
    return found


def openai_error(message: str, kind: str, code: str) -> str:
    """An OpenAI-shaped error body, single-quoted for HAProxy's `string` argument."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    assert "'" not in body
    return f"'{body}'"


ERRORS = {
    "unauthorized": openai_error(
        "Missing or incorrect API key: send Authorization: Bearer <key>.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "no_route": openai_error(
        "Unknown route: POST /v1/chat/completions, /v1/completions or /v1/embeddings, "
        "GET /v1/models.",
        "invalid_request_error",
        "unknown_url",
    ),
    "no_model": openai_error(
        "The model does not exist (or the request body names no model): see GET /v1/models.",
        "invalid_request_error",
        "model_not_found",
    ),
    "too_large": openai_error(
        f"The gateway reads the model from the first {MAX_BODY} bytes of the body: put "
        '"model" first in a request this large.',
        "invalid_request_error",
        "request_too_large",
    ),
    "not_allowed": openai_error(
        "This API key may not use this model.", "invalid_request_error", "model_not_allowed"
    ),
    "rate": openai_error(
        "Rate limit reached: too many requests per minute for this API key.",
        "requests",
        "rate_limit_exceeded",
    ),
    "concurrent": openai_error(
        "Rate limit reached: too many requests in flight for this API key.",
        "requests",
        "rate_limit_exceeded",
    ),
}
HTTP_ERRORS = [
    (502, openai_error("The model server failed.", "server_error", "bad_gateway")),
    (503, openai_error("No replica of this model is up.", "server_error", "unavailable")),
    (504, openai_error("The model server timed out.", "server_error", "timeout")),
]


def haproxy_config(plan: HostPlan, engine_key: str | None, layout: GatewayLayout) -> str:
    gateway = plan.gateway
    assert gateway is not None, f"host {plan.name} runs no gateway"
    env = environment().overlay()
    env.filters.update(haproxy_word=haproxy_word, haproxy_secret=haproxy_secret)
    return env.get_template("haproxy.cfg.j2").render(
        fleet=plan.fleet,
        layout=layout,
        bind=bind_address(layout.bind_address),
        port=int(gateway.port),
        pools=pools(gateway.routes),
        engine_key=engine_key,
        metrics_clients=sorted(set(plan.firewall_allow) | set(gateway.metrics_clients)),
        errors=ERRORS,
        http_errors=HTTP_ERRORS,
        bufsize=BUFSIZE,
        max_body=MAX_BODY,
        maxconn=MAXCONN,
        prefix_bytes=PREFIX_BYTES,
        balance_factor=BALANCE_FACTOR,
    )


def _lines(rows: Iterable[str]) -> str:
    return "".join(f"{row}\n" for row in rows)


def map_files(plan: HostPlan, keys: list[ApiKey]) -> dict[str, str]:
    """The maps' contents by the layout's property name (keys, allowed, routes, limits, models)."""
    assert plan.gateway is not None
    backends = pools(plan.gateway.routes)
    served = [model for pool in backends for model in pool.models]
    routes = [f"{model} {pool.name}" for pool in backends for model in pool.models]
    allowed = [f"{k.name}/{m} 1" for k in keys for m in (k.models or served) if m in served]
    models = [{"id": m, "object": "model", "created": 0, "owned_by": "servekit"} for m in served]
    return {
        "keys_map": _lines(f"{k.sha256} {k.name}" for k in keys),
        "allowed_map": _lines(allowed),
        "routes_map": _lines(routes),
        "rpm_map": _lines(f"{k.name} {k.rpm}" for k in keys if k.rpm),
        "concurrent_map": _lines(f"{k.name} {k.concurrent}" for k in keys if k.concurrent),
        "models_json": json.dumps({"object": "list", "data": models}, indent=1) + "\n",
    }


def gateway_files(
    plan: HostPlan,
    keys: list[ApiKey],
    engine_key: str | None,
    layout: GatewayLayout = GATEWAY,
) -> list[RenderedFile]:
    """HAProxy's config and servekit's maps, all 0640 root:haproxy (the config holds the
    engines' key, the keys map the clients' hashed keys)."""

    def file(path: str, content: str) -> RenderedFile:
        return RenderedFile(path, content, MODE, "root", layout.group)

    maps = map_files(plan, keys)
    return [file(layout.config, haproxy_config(plan, engine_key, layout))] + [
        file(getattr(layout, name), content) for name, content in maps.items()
    ]


def gateway_lines(plan: HostPlan) -> list[str]:
    """What `servekit plan` shows of the gateway: its URL and each pool (never a key). Replicas
    are shown as planned, also those whose address comes at `servekit cloud apply`."""
    gateway = plan.gateway
    if gateway is None:
        return []
    host = plan.address or plan.cluster_address or f"<{plan.name}>"
    lines = [f"gateway: http://{host}:{gateway.port}/v1 (HAProxy, one key per client)"]
    for (engine, routing, upstreams), models in grouped_routes(gateway.routes).items():
        count = len(upstreams)
        shown = ", ".join(_shown(u) for u in upstreams)
        affinity = ", prefix-affinity" if routing == "prefix-affinity" else ""
        lines.append(
            f"  {', '.join(models)}: {engine}, {count} replica{'s' if count != 1 else ''} "
            f"({shown}){affinity}"
        )
    return lines


def _shown(upstream: str) -> str:
    """An upstream as HAProxy will write it, or as planned when it has no address yet."""
    try:
        return server_address(upstream)
    except ValueError:
        return upstream
