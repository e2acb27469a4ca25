"""Production on AWS: two p4de.24xlarge (8 x A100-80GB each) serving Llama 3.1 70B Instruct,
one replica per node (TP 8), behind the gateway, with Prometheus.

For one replica across both nodes (TP 8 x PP 2: longer contexts, fewer replicas), set
`nodes_per_replica=2` on the Serve entry.

    servekit cloud plan inventories/prod.py      # what AWS resources it needs, and the cost
    servekit cloud apply inventories/prod.py     # create them; addresses go to cloud/prod.json
    pyinfra inventories/prod.py deploys/gpu.py deploys/vllm.py
"""

from servekit.inventory import pyinfra_groups
from servekit.spec import (
    AwsNodeGroup,
    Fleet,
    Gateway,
    HuggingFace,
    Monitoring,
    SecretRef,
    Serve,
    Sources,
)

fleet = Fleet(
    name="prod",
    machines=[
        AwsNodeGroup(
            name="a100",
            instance_type="p4de.24xlarge",
            count=2,
            region="us-east-1",
            fallback_instance_types=["p4d.24xlarge"],
            ssh_key="~/.ssh/servekit-prod",
            ssh_cidrs=["203.0.113.0/24"],
        ),
    ],
    serve=[Serve(model="llama-3.1-70b-instruct", engine="vllm", nodes_per_replica=1)],
    gateway=Gateway(
        host="a100-0", port=8080, api_keys=SecretRef(file="~/.config/servekit/prod/client-keys")
    ),
    monitoring=Monitoring(host="a100-0"),
    engine_api_key=SecretRef(file="~/.config/servekit/prod/engine.key"),
    sources=Sources(weights=HuggingFace(token=SecretRef(file="~/.config/servekit/hf-token"))),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
