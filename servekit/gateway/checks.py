"""Before the gateway routes a model to replicas it has never routed to (a first deploy, new
hosts, the move of a model from Ollama to vLLM), at least one of them must answer its health
check from the gateway host; otherwise the configuration is not changed and the run says to
deploy the engines first. The clients keep the replicas that served them until then.

Pools the running configuration already has (one of their addresses is a `server` line of it)
are not checked: a replica that is down for a while must not block a key change.
"""

from __future__ import annotations

from servekit.gateway.haproxy import Pool
from servekit.shell import quote as q

CONNECT_TIMEOUT_S = 3


def _probe(address: str, path: str) -> str:
    """bash: true when `GET path` on `address` (HAProxy's `host:port`, IPv6 in brackets)
    answers 200 (bash's /dev/tcp: the gateway host needs no curl)."""
    host, _sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    request = f"GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n"
    inner = f'exec 3<>/dev/tcp/{host}/{port} && printf "{request}" >&3 && head -n 1 <&3'
    return f"timeout {CONNECT_TIMEOUT_S} bash -c {q(inner)} 2>/dev/null | grep -q ' 200 '"


def new_pools_answer_script(pools: list[Pool], config: str) -> str:
    """bash: fail, naming the models and addresses, when a pool the running configuration
    `config` does not know has no replica answering its health check."""
    parts = [f"cfg={q(config)}; failed=0"]
    for pool in pools:
        addresses = [s.address for s in pool.servers]
        known = " || ".join(
            f"awk -v a={q(a)} '$1 == \"server\" && $3 == a {{ f = 1 }} END {{ exit !f }}' "
            '"$cfg" 2>/dev/null'
            for a in addresses
        )
        healthy = " || ".join(_probe(a, pool.health) for a in addresses) or "false"
        message = (
            f"servekit: no replica of {', '.join(pool.models)} ({pool.engine}: "
            f"{' '.join(addresses) or 'none planned'}) answers {pool.health} from the gateway "
            "host: deploy the engines first (deploys/vllm.py, deploys/ollama.py); the gateway "
            "keeps its current configuration"
        )
        parts.append(
            f"if ! {{ {known or 'false'}; }} && ! {{ {healthy}; }}; then "
            f"echo {q(message)} >&2; failed=1; fi"
        )
    parts.append('[ "$failed" = 0 ]')
    return "; ".join(parts)
