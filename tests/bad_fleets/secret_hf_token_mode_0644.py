# family: secrets
# expect-field: sources.weights.token
# refused-by: pyinfra
# deploy: vllm
"""The HF token is world-readable."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

SECRETS = os.environ.get("SERVEKIT_BAD_SECRETS", "/nonexistent")

fleet = Fleet(
    name="bad-secret-hf-token-mode-0644",
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
    sources=Sources(weights=HuggingFace(token=SecretRef(file=SECRETS + "/mode-0644"))),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
