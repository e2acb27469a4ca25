"""Log lines shaped like vLLM's (`INFO 11-26 07:00:00 [api_server.py] message`) on stderr."""

from __future__ import annotations

import asyncio
import sys
import time


def log(level: str, source: str, message: str) -> None:
    """Write one vLLM-style log line to stderr and flush it (journald reads it at once)."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    sys.stderr.write(f"{level} {stamp} [{source}] {message}\n")
    sys.stderr.flush()


def uvicorn(message: str) -> None:
    """A uvicorn-style line, as vLLM's HTTP server prints them."""
    sys.stderr.write(f"INFO:     {message}\n")
    sys.stderr.flush()


# asyncio.wait_for raises asyncio.TimeoutError, which is the builtin TimeoutError (an OSError) only
# from 3.11 on; catching both keeps the stand-in working on Python 3.10 (Ubuntu 22.04) too.
WAIT_TIMEOUT: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)
NET_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
