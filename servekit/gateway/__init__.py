"""The gateway's plan: client keys, the files HAProxy reads on the gateway host, and the lines
`servekit plan` shows. Pure: no pyinfra, no host; the deploy writes what `gateway_files` returns."""

from servekit.gateway.haproxy import gateway_files, gateway_lines
from servekit.gateway.keys import ApiKey, KeysError, parse_keys
from servekit.gateway.layout import GATEWAY, GatewayLayout

__all__ = [
    "GATEWAY",
    "ApiKey",
    "GatewayLayout",
    "KeysError",
    "gateway_files",
    "gateway_lines",
    "parse_keys",
]
