"""The firewall of the fleet's vLLM hosts (also part of deploys/vllm.py).

pyinfra inventories/prod.py deploys/firewall.py
"""

from servekit.deploys.firewall import firewall_host

firewall_host()
