"""A word-level tokenizer that counts exactly as the stand-in vLLM and Ollama servers do.

The stand-ins count a token per word (regex `\\w+|[^\\w\\s]`). A WordLevel tokenizer over plain
words with a whitespace pre-tokenizer gives the same count for any text made of its words, so a
client that builds prompts with it sends exactly the lengths the server then reports. Built
offline with the `tokenizers` library and saved as a folder that both `servekit bench
--tokenizer DIR` and `vllm bench serve --tokenizer DIR` (transformers) load.

    python benchmarks/standin_tokenizer.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "every",
    "model", "serves", "tokens", "at", "its", "own", "pace", "and", "clients", "measure", "time",
    "to", "first", "token", "latency", "throughput", "with", "care", "so", "that", "numbers",
    "from", "stand", "ins", "match", "what", "real", "engines", "would", "report", "under",
    "load", "today", "river", "stone", "cloud", "light", "paper", "garden", "window", "music",
    "silver", "mountain", "ocean", "forest", "summer", "winter", "engine", "signal", "harbor",
    "valley", "planet", "market", "bridge", "castle", "meadow", "canyon", "desert", "island",
]  # fmt: skip
UNKNOWN = "[UNK]"


def write_tokenizer(folder: Path, words: list[str] = WORDS) -> Path:
    """Write tokenizer.json, tokenizer_config.json and config.json into `folder`; return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {UNKNOWN: 0, **{word: i + 1 for i, word in enumerate(dict.fromkeys(words))}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.add_special_tokens([UNKNOWN])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": UNKNOWN,
                "model_max_length": 1_000_000,
                "clean_up_tokenization_spaces": False,
            }
        )
    )
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "vocab_size": len(vocab), "architectures": []})
    )
    return folder


if __name__ == "__main__":
    print(write_tokenizer(Path(sys.argv[1])))
