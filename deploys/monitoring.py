"""Monitoring of the fleet: Prometheus, Alertmanager and servekit's alert rules on
`Monitoring.host`.

    pyinfra inventories/prod.py deploys/monitoring.py

Hosts without monitoring in their plan are left alone. See servekit/deploys/monitoring.py for
the steps (the operations are in servekit/operations/monitoring.py).
"""

from servekit.deploys.monitoring import monitoring_host

monitoring_host()
