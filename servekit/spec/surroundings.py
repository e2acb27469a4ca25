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
    alert_webhook: SecretRef | None = Field(
        None, description="a URL Alertmanager posts alerts to (none: alerts are sent nowhere)"
    )
    ttft_p95_seconds: float = Field(
        5.0, gt=0, le=3600, description="objective: TTFT p95 per model above it for 10 min alerts"
    )
    waiting_requests: int = Field(
        32, ge=1, le=1_000_000, description="requests waiting in one replica for 5 min that alert"
    )
