"""One A100-80GB server serving Llama 3.1 8B Instruct with vLLM (the whole GPU, full context).

servekit plan inventories/single_a100.py
pyinfra inventories/single_a100.py deploys/gpu.py deploys/vllm.py
"""

from servekit.inventory import pyinfra_groups
from servekit.spec import Fleet, Gpu, HuggingFace, SecretRef, Serve, Sources, SshHost

fleet = Fleet(
    name="single-a100",
    machines=[
        SshHost(
            name="gpu1",
            address="10.0.0.11",
            ssh_user="ubuntu",
            gpu=Gpu(model="A100-80GB", count=1),
        ),
    ],
    serve=[Serve(model="llama-3.1-8b-instruct", engine="vllm")],
    engine_api_key=SecretRef(file="~/.config/servekit/single-a100/engine.key"),
    sources=Sources(weights=HuggingFace(token=SecretRef(file="~/.config/servekit/hf-token"))),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
