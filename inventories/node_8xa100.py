"""One 8 x A100-SXM4-80GB (HGX, NVSwitch) server serving Llama 3.1 70B Instruct, tensor parallel 8.

servekit plan inventories/node_8xa100.py
pyinfra inventories/node_8xa100.py deploys/gpu.py deploys/vllm.py
"""

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

fleet = Fleet(
    name="node-8xa100",
    machines=[
        SshHost(
            name="hgx1",
            address="10.0.0.21",
            ssh_user="ubuntu",
            gpu=Gpu(model="A100-SXM4-80GB", count=8),
        ),
    ],
    serve=[Serve(model="llama-3.1-70b-instruct", engine="vllm", tensor_parallel=8)],
    engine_api_key=SecretRef(file="~/.config/servekit/node-8xa100/engine.key"),
    sources=Sources(weights=HuggingFace(token=SecretRef(file="~/.config/servekit/hf-token"))),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
