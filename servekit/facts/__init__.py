"""pyinfra facts servekit reads from hosts (GPUs, driver, NVSwitch, CUDA, engine health)."""
