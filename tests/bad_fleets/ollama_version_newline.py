# family: versions
# expect-field: versions.ollama
# refused-by: plan render pyinfra
# deploy: ollama
"""Versions(ollama='0.99.0\\nExecStartPre=+/bin/sh -c id')."""

import os

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, Serve, SshHost, Versions

# The harness opens a TCP listener here: nothing may connect to it.
PORT = int(os.environ.get("SERVEKIT_BADFLEET_PORT", "22"))

fleet = Fleet(
    name="bad-ollama-version-newline",
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
    versions=Versions(ollama="0.99.0\nExecStartPre=+/bin/sh -c id"),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
