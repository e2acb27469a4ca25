"""The check groups `servekit doctor` runs, in order (see `servekit.doctor.run` for the
interface each group module has)."""

from __future__ import annotations

from types import ModuleType

from servekit.doctor import engines, gpu, network, system

GROUPS: list[ModuleType] = [gpu, system, network, engines]
