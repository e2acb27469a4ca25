# family: injection
# expect-field: serve[0].model
# refused-by: plan render pyinfra
# deploy: ollama
"""An Ollama tag with '..'."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, Serve, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-ollama-model-dotdot",
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
        Serve(model="../../etc/passwd", engine="ollama"),
    ],
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
