"""Stand-in `vllm` 0.33.0 for servekit's tests: vLLM's CLI and HTTP surface, no GPU, no engine.

It accepts exactly vLLM 0.33.0's `vllm serve` flags (from the recorded `--help=all`), honours the
ones a deployment depends on (host, port, API keys, served names, max model length, multi-node
rendezvous, weights location) and serves vLLM's routes with fake tokens at a configurable pace.
Runs on the Python standard library plus PyYAML (for `--config`).

Behaviour knobs (environment variables):

- `VLLM_STANDIN_STARTUP_DELAY`: seconds before the engine is "ready" and the port listens (0.5).
- `VLLM_STANDIN_TTFT`: seconds from admission to the first token (0.05).
- `VLLM_STANDIN_TOKENS_PER_S`: decode rate per stream (200); 0 = no timed sleeps at all (streams
  only yield to each other between tokens).
- `VLLM_STANDIN_FAIL_AFTER_TOKENS`: after N tokens end the stream with an error event (then
  `data: [DONE]`); a non-streamed request gets a 500.
- `VLLM_STANDIN_EOS_AFTER`: unless the request sets `ignore_eos`, finish with `finish_reason:
  "stop"` after max(N, min_tokens) tokens (if that is below max_tokens).
- `VLLM_STANDIN_CHUNK_LOG`: a file; one line per streamed chunk is appended:
  `<time.time() after the write> <request id> <token index> <kind>`, kind being `token` (index
  0-based) or `role`, `usage`, `error`, `done` (index -1). Flushed before `data: [DONE]` is sent
  (so a client that has read it finds every token line) and when the request ends.
- `VLLM_STANDIN_NODE_TIMEOUT`: seconds of heartbeat silence after which a multi-node peer counts as
  gone (5).

Prefix cache (simulated, `_prefix.py`): an LRU of the prompts' 16-token blocks (`--block-size`),
`--num-gpu-blocks-override` of them (8192), off with `--disable-prefix-caching`; `/metrics` has
vLLM's `vllm:prefix_cache_queries_total` and `vllm:prefix_cache_hits_total` (tokens).

Real vLLM variables honoured: `VLLM_API_KEY`, `VLLM_ENGINE_READY_TIMEOUT_S` (600),
`VLLM_ALLOW_LONG_MAX_MODEL_LEN`, `HF_HUB_OFFLINE`, `HF_HOME`, `HF_HUB_CACHE`; `VLLM_HOST_IP`,
`NCCL_SOCKET_IFNAME` and `GLOO_SOCKET_IFNAME` are logged when set.
"""

__version__ = "0.33.0"
