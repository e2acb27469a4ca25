"""What surrounds the engines: the gateway clients use and the monitoring that scrapes them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
)

from servekit.fields import (
    ControlPath,
    PrometheusDuration,
    Text,
    Url,
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


AptWord = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
"""An apt suite or component name (`stable`, `main`): one deb822 word."""


class Grafana(Spec):
    """Grafana on the monitoring host, from Grafana's apt repository or a mirror of it (Debian
    has no grafana package), with servekit's dashboard. Grafana's install guide:
    https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/ (repository
    `https://apt.grafana.com stable main`, key https://apt.grafana.com/gpg-full.key, packages
    `grafana` and `grafana-enterprise`)."""

    apt_url: Url = Field("https://apt.grafana.com", description="the repository or its mirror")
    suite: AptWord = "stable"
    component: AptWord = "main"
    signing_key: ControlPath = Field(
        description="the repository's OpenPGP key (ASCII-armored, e.g. apt.grafana.com/gpg-full.key"
        " downloaded once and checked) on the control machine; apt trusts it for this "
        "repository only"
    )
    package: Literal["grafana", "grafana-enterprise"] = "grafana"
    port: Port = 3000
    admin_password: SecretRef = Field(
        description="the admin user's password (Grafana sets it at its first start only)"
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
    grafana: Grafana | None = Field(
        None, description="Grafana beside Prometheus, with servekit's dashboard (none: no Grafana)"
    )
