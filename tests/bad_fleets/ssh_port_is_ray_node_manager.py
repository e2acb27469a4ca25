# family: ports
# expect-field: machines[1].ssh_port | serve[0].distributed_backend
# refused-by: plan render pyinfra
# deploy: vllm
# listen: 6380
"""ssh_port 6380 is Ray's node manager port on the second Ray node."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-ssh-port-is-ray-node-manager",
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
            ssh_port=6380,
            ssh_user="ubuntu",
            gpu=Gpu(model="A100-80GB", count=1),
        ),
    ],
    serve=[
        Serve(model="llama-3.1-8b-instruct", nodes_per_replica=2, distributed_backend="ray"),
    ],
    engine_api_key=SecretRef(env="SERVEKIT_BADFLEET_KEY"),
    sources=Sources(weights=HuggingFace(token=SecretRef(env="SERVEKIT_BADFLEET_KEY"))),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
