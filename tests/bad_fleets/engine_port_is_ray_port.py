# family: ports
# expect-field: serve[0].port
# refused-by: plan render pyinfra
# deploy: vllm
"""vLLM's API port 6379 = Ray's GCS port."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-engine-port-is-ray-port",
    machines=[
        SshHost(
            name="gpu1",
            address="127.0.0.1",
            ssh_port=PORT,
            ssh_user="ubuntu",
            gpu=Gpu(model="A100-80GB", count=1),
        ),
        SshHost(
            name="gpu2",
            address="127.0.0.1",
            ssh_port=PORT,
            ssh_user="ubuntu",
            gpu=Gpu(model="A100-80GB", count=1),
        ),
    ],
    serve=[
        Serve(
            model="llama-3.1-8b-instruct", nodes_per_replica=2, distributed_backend="ray", port=6379
        ),
    ],
    engine_api_key=SecretRef(env="SERVEKIT_BADFLEET_KEY"),
    sources=Sources(weights=HuggingFace(token=SecretRef(env="SERVEKIT_BADFLEET_KEY"))),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
