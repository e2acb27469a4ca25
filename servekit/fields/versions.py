"""Versions and durations: Ollama release tags, OLLAMA_KEEP_ALIVE, Prometheus durations."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from servekit.errors import invalid

# Ollama's release tags are vX.Y.Z and vX.Y.Z-rcN (github.com/ollama/ollama/releases/tag/v0.12.3;
# release candidates such as 0.4.0-rc8: github.com/ollama/ollama/issues/7507). servekit pins the
# version without the 'v'.
_OLLAMA_VERSION = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}(-rc\d{1,3})?$", re.ASCII)


def check_ollama_version(value: str) -> str:
    if not _OLLAMA_VERSION.fullmatch(value):
        raise invalid(
            f"{value!r} is not an Ollama release version",
            "pin a release as X.Y.Z or X.Y.Z-rcN (e.g. '0.12.3', without the 'v')",
        )
    return value


OllamaVersion = Annotated[str, AfterValidator(check_ollama_version)]

# OLLAMA_KEEP_ALIVE: Go's time.ParseDuration, else an integer number of seconds; negative keeps a
# model loaded forever (envconfig.KeepAlive in github.com/ollama/ollama, envconfig/config.go).
# Go durations: an optional sign, then decimal numbers each with a unit ns/us/µs/ms/s/m/h, or "0".
_GO_DURATION = re.compile(r"^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+)$", re.ASCII)
_SECONDS = re.compile(r"^[-+]?\d{1,18}$", re.ASCII)


def check_keep_alive(value: str) -> str:
    if not (_GO_DURATION.fullmatch(value) or _SECONDS.fullmatch(value)):
        raise invalid(
            f"{value!r} is not a duration Ollama reads",
            "use a Go duration such as '5m', '1h30m' or '0', or whole seconds ('-1': forever)",
        )
    return value


KeepAlive = Annotated[str, AfterValidator(check_keep_alive)]

# Prometheus durations (prometheus/common model/time.go, durationRE and ParseDuration): units
# y w d h m s ms in this order, each at most once, or "0" (refused here: an interval above zero).
_PROM_DURATION = re.compile(
    r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
)


def check_prometheus_duration(value: str) -> str:
    if (
        not value
        or value == "0"
        or not _PROM_DURATION.fullmatch(value)
        or not any(c.isdigit() and c != "0" for c in value)
    ):
        raise invalid(
            f"{value!r} is not a Prometheus duration above zero",
            "use units y w d h m s ms in that order, e.g. '15s', '1m30s', '15d'",
        )
    return value


PrometheusDuration = Annotated[str, AfterValidator(check_prometheus_duration)]
