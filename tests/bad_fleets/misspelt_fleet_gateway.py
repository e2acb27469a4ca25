# family: types
# expect-field: gatway
# refused-by: plan render pyinfra
# deploy: vllm
"""Fleet field gatway (typo of gateway)."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gateway, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-misspelt-fleet-gateway",
    machines=[
        SshHost(
            name="gpu1",
            address="127.0.0.1",
            ssh_port=PORT,
            ssh_user="ubuntu",
            gpu=Gpu(model="A100-80GB", count=1),
        ),
    ],
    serve=[
        Serve(model="llama-3.1-8b-instruct", engine="vllm"),
    ],
    engine_api_key=SecretRef(env="SERVEKIT_BADFLEET_KEY"),
    sources=Sources(weights=HuggingFace(token=SecretRef(env="SERVEKIT_BADFLEET_KEY"))),
    gatway=Gateway(host="gpu1", api_keys=SecretRef(env="SERVEKIT_BADFLEET_KEY")),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
