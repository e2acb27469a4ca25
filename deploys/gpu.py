"""GPU hosts: NVIDIA driver, Fabric Manager, persistence mode, optional CUDA toolkit and DCGM.

    pyinfra inventories/node_8xa100.py deploys/gpu.py     # the fleet's GPU hosts
    pyinfra @local deploys/gpu.py --sudo                  # this machine, without a fleet

Without servekit host data (`@local`, or an inventory not made by servekit) it uses the catalog's
defaults (driver branch, NVIDIA's repository) and takes the GPUs from the host, and says so.
"""

from servekit.deploys.gpu import gpu_host

gpu_host()
