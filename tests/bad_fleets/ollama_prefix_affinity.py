# family: gpu-model
# expect-field: serve[0]
# refused-by: plan render pyinfra
# deploy: ollama
"""routing="prefix-affinity" on an Ollama model (it is for vLLM pools)."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, Serve, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-ollama-prefix-affinity",
    machines=[
        SshHost(
            name="box1",
            address="127.0.0.1",
            ssh_port=PORT,
            ssh_user="ubuntu",
            gpu=Gpu(model="L4", count=1),
        ),
    ],
    serve=[
        Serve(model="llama3.1:8b", engine="ollama", routing="prefix-affinity"),
    ],
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
