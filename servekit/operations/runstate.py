"""What servekit's operations remember during one pyinfra run, held per pyinfra `State`.

pyinfra may evaluate a deploy twice: once to detect changes (`state.is_executing` false: each
operation runs up to its first command) and once to execute. Each pass gets its own record,
so a dry run never leaks into the execution; a new `State` (a new run, or a test) starts empty,
and the record goes away with its `State`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra.context import host

from servekit.gateway.drain import Target
from servekit.vllm_rollout import Rollout


@dataclass
class HostRun:
    """One host's record in one pass."""

    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`HostState` readings by their spec (JSON), until an operation changes the host."""
    venv_rebuilt: bool = False
    """The vLLM venv was (re)built: every running vLLM process restarts."""
    ray_restarted: bool = False
    """A Ray node was (re)started: the Ray head waits for its cluster again."""
    drained: dict[str, list[Target]] = field(default_factory=dict)
    """Gateway host: the servers a rollout wave ("vllm 1", "ollama 0") took out of rotation,
    to put back after it."""


@dataclass
class PassRecord:
    """Every host's record in one pass, and the fleet's rollout."""

    hosts: dict[str, HostRun] = field(default_factory=dict)
    rollout: Rollout = field(default_factory=Rollout)
    ollama_restarts: set[str] = field(default_factory=set)
    """Ollama hosts whose service restarts after a change in this run (drained first)."""


_BY_STATE: WeakKeyDictionary[Any, dict[bool, PassRecord]] = WeakKeyDictionary()
"""pyinfra `State` -> {is_executing: record}; entries vanish with their `State`."""


def this_pass() -> PassRecord:
    """The record of the current pyinfra run and pass."""
    state = host.state
    passes = _BY_STATE.setdefault(state, {})
    return passes.setdefault(bool(state.is_executing), PassRecord())


def this_host() -> HostRun:
    """The current host's record in the current run and pass."""
    return this_pass().hosts.setdefault(host.name, HostRun())


def rollout() -> Rollout:
    """The fleet's rollout in the current run and pass."""
    return this_pass().rollout
