"""The gateway in front of the fleet's engines: HAProxy, the clients' API keys, their limits.

    pyinfra inventories/prod.py deploys/vllm.py deploys/gateway.py

Hosts without the gateway in their plan are left alone. See servekit/deploys/gateway.py for the
steps (the operations are in servekit/operations/gateway.py).
"""

from servekit.deploys.gateway import gateway_host

gateway_host()
