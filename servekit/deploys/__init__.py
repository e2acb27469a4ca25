"""pyinfra @deploy blocks: NVIDIA driver, CUDA, vLLM, Ollama, gateway, monitoring."""
