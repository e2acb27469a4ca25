# family: gpu-model
# expect-field: machines[0].gpu
# refused-by: plan render pyinfra
# deploy: ollama
"""Apple GPU without memory_gib."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, Serve, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-apple-gpu-without-memory",
    machines=[
        SshHost(
            name="mac1",
            address="127.0.0.1",
            ssh_port=PORT,
            ssh_user="ubuntu",
            gpu=Gpu(model="apple-m2-max"),
            os="macos",
        ),
    ],
    serve=[
        Serve(model="llama3.1:8b", engine="ollama"),
    ],
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
