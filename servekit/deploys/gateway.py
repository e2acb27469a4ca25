"""The gateway: HAProxy from Debian on `Gateway.host`, one OpenAI-compatible endpoint in front of
every replica, with the clients' API keys and their limits.

`gateway_host()` is the pyinfra deploy `deploys/gateway.py` runs on every host of a fleet. On
the host whose plan (`servekit.deploys.common.host_plan`) has a gateway it:

1. reads the clients' keys file and the engines' key on the control machine (a read or syntax
   error stops this host with the reason, never a key);
2. renders the configuration and key maps (`servekit.gateway.haproxy.gateway_files`);
3. installs Debian's `haproxy` (and `socat`, for rollouts to drain replicas through its admin
   socket), checks that every pool it does not route to yet has a replica answering its health
   check (else it stops, keeping the running configuration: deploy the engines first), writes
   the files (0640 root:haproxy, staged and checked with `haproxy -c` before they count: a
   refused configuration is rolled back), enables and starts `haproxy.service`, and reloads it
   only after a file changed (hitless);
4. sets up the access log and per-key metrics (`servekit.operations.gateway_metrics`): rsyslog
   writes HAProxy's lines to a file, mtail serves counters and histograms from it.

Every other host is left alone. The engines' firewall already admits the gateway host (see
`servekit.placement.firewall`); the gateway port itself is open to clients, whose keys are the
control. Operations: `servekit.operations.gateway`.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.context import host

from servekit import secrets
from servekit.deploys.common import host_plan
from servekit.gateway.haproxy import gateway_files, pools
from servekit.gateway.keymetrics import metrics_files
from servekit.gateway.keys import ApiKey, KeysError, parse_keys
from servekit.hostplan import GatewayHost
from servekit.operations.common import problem
from servekit.operations.gateway import (
    gateway_config,
    gateway_directory,
    gateway_reload,
    gateway_service,
    haproxy_package,
)
from servekit.operations.gateway_metrics import metrics_steps
from servekit.operations.rendered import any_changed
from servekit.secrets import SecretError


@deploy("servekit gateway")
def gateway_host() -> None:
    """Converge the gateway on this host from its servekit plan (nothing without a gateway)."""
    plan = host_plan()
    if plan is None:
        logger.warning(f"{host.name}: no servekit plan in host data; skipping the gateway")
        return
    if plan.gateway is None:
        return
    read = read_secrets(plan.gateway)
    if read is None:
        return
    keys, engine_key = read
    files = gateway_files(plan, keys, engine_key)
    haproxy_package(name="Install HAProxy")
    gateway_directory(name="Create the gateway directory")
    config = gateway_config(
        name="Write the gateway configuration", files=files, pools=pools(plan.gateway.routes)
    )
    gateway_service(name="Enable and start haproxy.service")
    gateway_reload(name="Reload HAProxy", _if=any_changed(config))
    metrics_steps(metrics_files(plan))


def read_secrets(gateway: GatewayHost) -> tuple[list[ApiKey], str | None] | None:
    """The clients' keys (parsed against the served model names) and the engines' key, read on
    the control machine; None after stopping this host with why (never a key)."""
    served = {route.model for route in gateway.routes}
    try:
        keys = parse_keys(secrets.load_numbered_lines(gateway.api_keys), served)
        engine = gateway.engine_api_key
        engine_key = secrets.read_secret(engine) if engine is not None else None
    except KeysError as error:
        problem(name="Read the gateway's keys", message=f"{gateway.api_keys.describe()}: {error}")
        return None
    except SecretError as error:
        problem(name="Read the gateway's keys", message=str(error))
        return None
    return keys, engine_key
