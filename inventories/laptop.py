"""This laptop (macOS or Linux) running Ollama on loopback with the team's everyday models.

pyinfra inventories/laptop.py deploys/ollama.py
"""

from servekit.inventory import pyinfra_groups
from servekit.localhost import local_gpu, local_os
from servekit.spec import Fleet, LocalHost, OllamaSettings, Serve

fleet = Fleet(
    name="laptop",
    machines=[LocalHost(os=local_os(), gpu=local_gpu())],
    serve=[Serve(model="llama3.1:8b", engine="ollama")],
    ollama=OllamaSettings(keep_alive="30m"),
)

gpu, vllm, ollama, gateway, monitoring = pyinfra_groups(fleet)
