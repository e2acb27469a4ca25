"""servekit: provision LLM serving (vLLM, Ollama) on your own machines with pyinfra."""

__version__ = "0.1.0"
