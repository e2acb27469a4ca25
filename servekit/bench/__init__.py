"""Load generator and report for OpenAI-compatible endpoints (vLLM, Ollama, the gateway)."""
