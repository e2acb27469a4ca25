"""Read an engine's /metrics (Prometheus' text exposition format) and compute from two samples
what Prometheus would: per-second increases of counters and `histogram_quantile` over them.

Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (a sample is
`name{label="value",...} value [timestamp]`; label values escape `\\`, `"` and newlines).
Quantiles follow Prometheus' `bucketQuantile`
(https://github.com/prometheus/prometheus/blob/main/promql/quantile.go): buckets sorted by `le`,
counts made monotonic, linear interpolation inside the bucket, a lower bound of 0, and the
second-highest bound when the rank falls into the `+Inf` bucket.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class ExpositionError(ValueError):
    """A line that is not a sample, a comment or blank."""


def _labels(text: str) -> dict[str, str]:
    inner, labels, position = text[1:-1], {}, 0
    while position < len(inner.rstrip()):
        match = _LABEL.match(inner, position)
        if match is None:
            raise ExpositionError(f"bad labels: {text[:120]}")
        value = re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m.group(0)], match.group(2))
        labels[match.group(1)] = value
        position = match.end()
    return labels


def parse(text: str) -> list[Sample]:
    """Every sample of an exposition (comments and blank lines skipped)."""
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ExpositionError(f"not a sample: {line[:120]}")
        name, labels, value = match.groups()
        samples.append(Sample(name, _labels(labels) if labels else {}, float(value)))
    return samples


def total(samples: Iterable[Sample], name: str) -> float | None:
    """The sum of every series of `name` (None when it has none)."""
    values = [s.value for s in samples if s.name == name]
    return sum(values) if values else None


def peak(samples: Iterable[Sample], name: str) -> float | None:
    """The largest value of any series of `name` (None when it has none)."""
    values = [s.value for s in samples if s.name == name]
    return max(values) if values else None


def increase(before: float | None, after: float | None) -> float | None:
    """A counter's increase between two samples; a counter that went down was reset, and
    counts from 0 (as Prometheus' rate() treats a reset)."""
    if before is None or after is None:
        return None
    return after if after < before else after - before


def buckets(samples: Iterable[Sample], name: str) -> dict[float, float]:
    """`name_bucket` summed over every series by upper bound (`le`)."""
    found: dict[float, float] = {}
    for sample in samples:
        if sample.name == f"{name}_bucket" and "le" in sample.labels:
            bound = float(sample.labels["le"])
            found[bound] = found.get(bound, 0.0) + sample.value
    return found


def bucket_increase(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """Each bucket's increase between two samples (see `increase`)."""
    return {le: increase(before.get(le, 0.0), count) or 0.0 for le, count in after.items()}


def bucket_quantile(q: float, counts: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts; None where Prometheus
    answers NaN (no observations, no +Inf bucket, fewer than two buckets)."""
    ordered = sorted(counts.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    bounds, cumulative, highest = [], [], 0.0
    for bound, count in ordered:
        highest = max(highest, count)
        bounds.append(bound)
        cumulative.append(highest)
    observations = cumulative[-1]
    if observations == 0:
        return None
    rank = q * observations
    index = next(i for i, count in enumerate([*cumulative[:-1], math.inf]) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[index - 1] if index > 0 else 0.0
    count = cumulative[index] - (cumulative[index - 1] if index > 0 else 0.0)
    rank -= cumulative[index - 1] if index > 0 else 0.0
    if count <= 0:
        return None
    return start + (bounds[index] - start) * (rank / count)
