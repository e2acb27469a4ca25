"""Ollama servers in the status: Ollama serves no /metrics, so each is asked its version
(`GET /api/version` answers `{"version": "..."}`: https://docs.ollama.com/api-reference/get-version),
straight from this machine, in either mode (Prometheus has no Ollama target yet)."""

from __future__ import annotations

import httpx

from servekit.placement import FleetPlan
from servekit.status.declared import DeclaredOllama, declared_ollamas
from servekit.status.report import OllamaStatus


def probe(client: httpx.Client, server: DeclaredOllama) -> OllamaStatus:
    """Whether one Ollama server answers its version route (None when out of reach here)."""
    row = OllamaStatus(host=server.host, models=list(server.models), up=None)
    if server.url is None:
        return row.model_copy(update={"reason": server.unreachable})
    url = f"{server.url}/api/version"
    try:
        answer = client.get(url)
    except httpx.HTTPError as error:
        return row.model_copy(update={"up": False, "reason": f"cannot reach {url}: {error}"})
    try:
        body = answer.json() if answer.status_code == 200 else None
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        reason = f"{url} answered {answer.status_code}, not Ollama's version"
        return row.model_copy(update={"up": False, "reason": reason})
    return row.model_copy(update={"up": True, "version": body["version"]})


def probe_all(plan: FleetPlan, timeout_s: float = 5.0) -> list[OllamaStatus]:
    """Every declared Ollama server, asked once each."""
    servers = declared_ollamas(plan)
    if not servers:
        return []
    with httpx.Client(timeout=timeout_s) as client:
        return [probe(client, server) for server in servers]
