"""The live progress bar `servekit bench` draws on stderr while a level runs."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from servekit.bench.client import Timing


class RichProgress:
    """A live bar per load level: requests done, tokens/s so far, timeouts and errors."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
            transient=False,
        )
        self._task: TaskID | None = None
        self._tokens = 0
        self._bad = 0
        self._started = 0.0

    def level(self, description: str, total: int | None) -> None:
        self._progress.start()
        self._tokens = self._bad = 0
        self._started = asyncio.get_running_loop().time()
        self._task = self._progress.add_task(description, total=total, status="")

    def done(self, timing: Timing) -> None:
        assert self._task is not None
        self._tokens += timing.usage_output_tokens or len(timing.chunk_times)
        self._bad += timing.status != "ok"
        elapsed = max(asyncio.get_running_loop().time() - self._started, 1e-6)
        status = f"{self._tokens / elapsed:,.0f} tok/s"
        if self._bad:
            status += f", {self._bad} failed"
        self._progress.update(self._task, advance=1, status=status)

    def end(self) -> None:
        self._progress.stop()
