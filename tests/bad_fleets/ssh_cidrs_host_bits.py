# family: cloud
# expect-field: machines[0].ssh_cidrs
# refused-by: plan render pyinfra
# deploy: vllm
"""AwsNodeGroup: host bits set."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import AwsNodeGroup, Fleet, HuggingFace, SecretRef, Serve, Sources

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

SECRETS = os.environ.get("SERVEKIT_BAD_SECRETS", "/nonexistent")

fleet = Fleet(
    name="bad-ssh-cidrs-host-bits",
    machines=[
        AwsNodeGroup(
            name="a100",
            instance_type="p4de.24xlarge",
            region="us-east-1",
            ssh_key=SECRETS + "/ssh-key",
            ssh_cidrs=["10.0.0.1/8"],
        ),
    ],
    serve=[
        Serve(model="llama-3.1-70b-instruct"),
    ],
    engine_api_key=SecretRef(env="SERVEKIT_BADFLEET_KEY"),
    sources=Sources(weights=HuggingFace(token=SecretRef(env="SERVEKIT_BADFLEET_KEY"))),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
