"""Ollama on laptops and small boxes: a pinned release run as a service, and the team's models.

    pyinfra inventories/laptop.py deploys/ollama.py         # the fleet's Ollama hosts
    pyinfra @local deploys/ollama.py                        # this machine, from a fleet file:
    pyinfra @local deploys/ollama.py --data servekit_fleet=inventories/team.py
    SERVEKIT_FLEET=inventories/team.py pyinfra @local deploys/ollama.py

Without servekit host data and without a fleet file named, the settings come from
inventories/laptop.py; the deploy says where it took them from.
"""

from servekit.deploys.ollama import ollama_host
from servekit.fleetfile import default_fleet_file

ollama_host(default_fleet=default_fleet_file(__file__))
