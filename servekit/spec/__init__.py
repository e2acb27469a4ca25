"""The fleet schema: one declaration of machines, what they serve, and what surrounds them.

An inventory file builds a `Fleet`; `servekit plan`, `servekit cloud` and the pyinfra deploys all
read it. Validation here is structural (names, references, security rules), and every value that
reaches a shell, a path, a unit, nftables, apt or a URL has a type from `servekit.fields`; no
string anywhere holds a control character. Planning (`servekit.placement`) then checks that each
model fits its hardware and places ports (never the SSH port, never inside another service's
range, never below 1024 for an engine); secrets are checked when pyinfra loads the inventory
(servekit/inventory.py). Every error names the field (at its position: `serve[1].port`), the fix,
and the inventory line that declared it.

Example::

    Fleet(
        name="single-a100",
        machines=[SshHost(name="gpu1", address="10.0.0.5", gpu=Gpu(model="A100-80GB"))],
        serve=[Serve(model="llama-3.1-8b-instruct")],
        engine_api_key=SecretRef(file="~/.config/servekit/engine.key"),
    )
"""

from servekit.spec.base import Name as Name
from servekit.spec.base import Port as Port
from servekit.spec.base import SecretRef
from servekit.spec.base import Spec as Spec
from servekit.spec.fleet import Fleet
from servekit.spec.machines import WIDEST_SSH_PREFIX as WIDEST_SSH_PREFIX
from servekit.spec.machines import AwsNodeGroup, Gpu, LocalHost, SshHost
from servekit.spec.machines import Machine as Machine
from servekit.spec.machines import SshNetwork as SshNetwork
from servekit.spec.ports import DCGM_EXPORTER_PORT as DCGM_EXPORTER_PORT
from servekit.spec.ports import NODE_EXPORTER_PORT as NODE_EXPORTER_PORT
from servekit.spec.ports import OLLAMA_PORT as OLLAMA_PORT
from servekit.spec.ports import RAY_FIXED_PORTS as RAY_FIXED_PORTS
from servekit.spec.ports import RAY_PORT as RAY_PORT
from servekit.spec.ports import RAY_WORKER_PORTS as RAY_WORKER_PORTS
from servekit.spec.ports import VLLM_MASTER_PORT as VLLM_MASTER_PORT
from servekit.spec.ports import VLLM_PORT as VLLM_PORT
from servekit.spec.serving import OllamaSettings, Serve
from servekit.spec.sources import GpuSetup, HuggingFace, LocalPath, S3Bucket, Sources, Versions
from servekit.spec.sources import WeightsSource as WeightsSource
from servekit.spec.surroundings import Gateway, Grafana, Monitoring

# What `from servekit.spec import *` gives an inventory: the schema, nothing else. pyinfra reads
# every list or tuple an inventory module holds as a host group, so no tuple may leak in.
__all__ = [
    "AwsNodeGroup",
    "Fleet",
    "Gateway",
    "Gpu",
    "GpuSetup",
    "Grafana",
    "HuggingFace",
    "LocalHost",
    "LocalPath",
    "Monitoring",
    "OllamaSettings",
    "S3Bucket",
    "SecretRef",
    "Serve",
    "Sources",
    "SshHost",
    "Versions",
]
