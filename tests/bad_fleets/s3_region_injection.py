# family: injection
# expect-field: sources.weights.region
# refused-by: plan render pyinfra
# deploy: vllm
"""S3 region with a newline."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, S3Bucket, SecretRef, Serve, Sources, SshHost

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-s3-region-injection",
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
    sources=Sources(weights=S3Bucket(bucket="models", region="us-east-1\nx")),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
