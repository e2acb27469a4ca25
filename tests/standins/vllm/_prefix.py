"""The stand-in's prefix cache: which prompt blocks a replica still holds, and vLLM's counters.

Like vLLM's automatic prefix caching, a prompt is cut into full blocks of `block_size` tokens,
each block named by a hash chained over every token before it; a new request reuses the longest
run of leading blocks still cached, at most up to its last token (that one is always computed).
Blocks are kept in least-recently-used order, at most `num_gpu_blocks` of them (so
`--num-gpu-blocks-override` sizes the cache, and `--disable-prefix-caching` turns it off).
Simplified: a block stays evictable while its request runs, and generated tokens are not cached.

Counters as vLLM v1 exports them (vllm/v1/metrics/loggers.py, PrometheusStatLogger:
`vllm:prefix_cache_queries` and `vllm:prefix_cache_hits`, prometheus_client Counters in tokens,
labels model_name and engine; prometheus_client writes the samples with `_total`), counted as
vllm/v1/core/kv_cache_manager.py `get_computed_blocks` counts them: queries += the request's
tokens, hits += the tokens of the reused blocks.
https://github.com/vllm-project/vllm/blob/main/vllm/v1/metrics/loggers.py
https://github.com/vllm-project/vllm/blob/main/vllm/v1/core/kv_cache_manager.py
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ._engine import _TOKEN_RE, _content_text

_MESSAGE_START = ("<|start|>",)
_MESSAGE_END = ("<|end|>",)


def chat_token_list(messages: list[dict[str, Any]]) -> list[str]:
    """A chat prompt as the stand-in's tokens: per message `<|start|> role <|sep|>` + its text +
    `<|end|>` (4 tokens of template), then `<|start|> assistant` (the generation prompt)."""
    tokens: list[str] = []
    for message in messages:
        role = str(message.get("role", ""))
        text = _TOKEN_RE.findall(_content_text(message.get("content")))
        tokens += [*_MESSAGE_START, role, "<|sep|>", *text, *_MESSAGE_END]
    tokens += [*_MESSAGE_START, "assistant"]
    return tokens


def completion_token_list(prompt: Any) -> list[str]:
    """A completion prompt (text, token ids, or a list of one of those) as tokens."""
    if isinstance(prompt, str):
        return list(_TOKEN_RE.findall(prompt))
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        return completion_token_list(prompt[0])
    if isinstance(prompt, list):
        return [f"<{t}>" for t in prompt]
    return []


class PrefixCache:
    """Cached prompt blocks of one server, least recently used first."""

    def __init__(self, block_size: int, capacity: int, enabled: bool = True) -> None:
        self.block_size = block_size
        self.capacity = capacity
        self.enabled = enabled
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.queries = 0
        self.hits = 0

    def _hashes(self, tokens: Sequence[str]) -> list[int]:
        hashes, parent = [], 0
        for start in range(0, len(tokens) - self.block_size + 1, self.block_size):
            parent = hash((parent, tuple(tokens[start : start + self.block_size])))
            hashes.append(parent)
        return hashes

    def admit(self, tokens: Sequence[str]) -> int:
        """Count one request's lookup, cache its full blocks; returns the tokens reused."""
        if not self.enabled or not tokens:
            return 0
        hashes = self._hashes(tokens)
        reusable = (len(tokens) - 1) // self.block_size
        reused = 0
        for block in hashes[:reusable]:
            if block not in self.blocks:
                break
            reused += 1
        for block in hashes:
            self.blocks[block] = None
            self.blocks.move_to_end(block)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        self.queries += len(tokens)
        self.hits += reused * self.block_size
        return reused * self.block_size

    def render(self, labels: str) -> list[str]:
        """The two counters in Prometheus text, as prometheus_client writes a Counter."""
        out = []
        for name, help_, value in (
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                self.queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                self.hits,
            ),
        ):
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            out.append(f"{name}_total{{{labels}}} {float(value)}")
        return out
