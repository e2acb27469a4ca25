# family: ports
# expect-field: ollama.clients
# refused-by: plan render pyinfra
# deploy: ollama
"""An exposed Ollama admitting 0.0.0.0/0 as a client address."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gateway, Gpu, OllamaSettings, SecretRef, Serve, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-ollama-clients-cidr-all",
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
        Serve(model="llama3.1:8b", engine="ollama"),
    ],
    ollama=OllamaSettings(expose=True, clients=["0.0.0.0/0"]),
    gateway=Gateway(host="box1", api_keys=SecretRef(env="SERVEKIT_BADFLEET_KEY")),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
