# family: types
# expect-field: machines[0].sudo
# refused-by: plan render pyinfra
# deploy: vllm
"""sudo='yes please'."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-sudo-text",
    machines=[
        SshHost(
            name="gpu1",
            address="127.0.0.1",
            ssh_port=PORT,
            ssh_user="ubuntu",
            gpu=Gpu(model="A100-80GB", count=1),
            sudo="yes please",
        ),
    ],
    serve=[
        Serve(model="llama-3.1-8b-instruct", engine="vllm"),
    ],
    engine_api_key=SecretRef(env="SERVEKIT_BADFLEET_KEY"),
    sources=Sources(weights=HuggingFace(token=SecretRef(env="SERVEKIT_BADFLEET_KEY"))),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
