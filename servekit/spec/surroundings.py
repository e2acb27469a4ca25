"""What surrounds the engines: the gateway clients use and the monitoring that scrapes them."""

from __future__ import annotations

from pydantic import (
    Field,
)

from servekit.fields import (
    PrometheusDuration,
    Text,
)
from servekit.spec.base import Port, SecretRef, Spec


class Gateway(Spec):
    """The one OpenAI-compatible endpoint clients use, with API keys, in front of the engines."""

    host: Text
    port: Port = 8080
    api_keys: SecretRef = Field(description="a file (or env variable) with one client key a line")
    drain_timeout: int = Field(
        120,
        ge=0,
        le=3600,
        description="seconds a rollout waits for a replica's requests to end before its restart",
    )


class Monitoring(Spec):
    """Prometheus scraping the engines, node exporters and (GPU hosts) DCGM exporters."""

    host: Text
    port: Port = 9090
    scrape_interval: PrometheusDuration = "15s"
    retention: PrometheusDuration = "15d"
