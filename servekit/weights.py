"""Where a served model's weights live on a host, for each kind of weights source (pure).

- Hugging Face: the Hub cache under `$HF_HOME/hub` (`models--ORG--NAME/snapshots/<commit>`); vLLM
  is given the model id and the pinned revision and reads the cache offline (`HF_HUB_OFFLINE=1`).
- S3: `s3://BUCKET/PREFIX/<checkpoint>/...` is copied to `/var/lib/vllm/models/<checkpoint>`;
  vLLM is given that directory.
- Local path: `<path>/<checkpoint>` on every host (an NFS mount, a disk image); nothing is copied,
  vLLM is given that directory, which must hold `config.json`.

A download is complete when its marker file exists (written last, after every file arrived), so
an interrupted copy is resumed on the next run and a complete one is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from servekit.hostplan import HfWeights, S3Weights, WeightsPlan
from servekit.vllm_layout import LAYOUT

Kind = Literal["huggingface", "s3", "local"]


@dataclass(frozen=True)
class WeightsLocation:
    """One checkpoint (at one revision) on a host, and what `vllm serve` is told to load."""

    kind: Kind
    checkpoint: str
    revision: str | None
    model_arg: str
    """The value of vLLM's `model` flag."""
    directory: str | None
    """Where the files are (S3, local); None for the Hub cache (vLLM resolves the snapshot)."""
    marker: str | None
    """Written when a download completed; None for a local path (nothing is downloaded)."""

    @property
    def description(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.checkpoint}{at}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text)


def locate(weights: WeightsPlan, checkpoint: str, revision: str | None) -> WeightsLocation:
    """Where `checkpoint` lives on a host for the fleet's weights source
    (`HostPlan.sources.weights`)."""
    if isinstance(weights, HfWeights):
        marker = f"{LAYOUT.markers_dir}/hf--{_slug(checkpoint)}--{_slug(revision or 'main')}.json"
        return WeightsLocation("huggingface", checkpoint, revision, checkpoint, None, marker)
    if isinstance(weights, S3Weights):
        directory = f"{LAYOUT.models_dir}/{checkpoint}"
        marker = f"{LAYOUT.markers_dir}/s3--{_slug(checkpoint)}.json"
        return WeightsLocation("s3", checkpoint, None, directory, directory, marker)
    directory = f"{weights.path.rstrip('/')}/{checkpoint}"
    return WeightsLocation("local", checkpoint, None, directory, directory, None)


def s3_prefix(weights: S3Weights, checkpoint: str) -> str:
    """The key prefix of a checkpoint in the fleet's bucket (`PREFIX/<checkpoint>/`)."""
    prefix = weights.prefix.strip("/")
    return f"{prefix}/{checkpoint}/" if prefix else f"{checkpoint}/"
