"""The ports servekit places its services on by default, and the ports Ray is pinned to."""

VLLM_PORT = 8000
OLLAMA_PORT = 11434
VLLM_MASTER_PORT = 29501
RAY_PORT = 6379
RAY_FIXED_PORTS = {
    "node-manager-port": 6380,
    "object-manager-port": 6381,
    "dashboard-agent-grpc-port": 6382,
    "metrics-export-port": 6383,
    "runtime-env-agent-port": 6384,
    "dashboard-agent-listen-port": 52365,
}
RAY_WORKER_PORTS = (10002, 19999)
"""Ray's ports are pinned so that the firewall can admit them from the replica's nodes only; a
Ray-backed replica claims all of them on each of its hosts (`servekit.placement`)."""
NODE_EXPORTER_PORT = 9100
DCGM_EXPORTER_PORT = 9400
