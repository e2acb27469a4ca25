"""vLLM on the fleet's GPU servers: install, weights, configs, units, health, rolling upgrades.

    pyinfra inventories/prod.py deploys/vllm.py        # after deploys/gpu.py

Hosts without vLLM in their plan are left alone. See servekit/deploys/vllm.py for the steps
(the operations are in servekit/operations/).
"""

from servekit.deploys.vllm import vllm_host

vllm_host()
