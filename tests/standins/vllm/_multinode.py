"""vLLM's native multi-node mode (`--nnodes K --node-rank R --master-addr A --master-port P`).

The head (rank 0) listens on A:P and waits until all K-1 workers have connected and said their rank
before the engine counts as ready (so its HTTP port opens only then). A `--headless` worker connects
to the head, retrying until VLLM_ENGINE_READY_TIMEOUT_S, stays connected and exits non-zero when the
head goes away, so systemd restarts it. Both sides exchange a heartbeat line every second and treat
`VLLM_STANDIN_NODE_TIMEOUT` seconds (default 5) of silence as a lost peer.

Wire protocol (one line each): worker `HELLO <rank> <nnodes>`; head `OK` or `ERROR <reason>`; head
`READY` once every worker is in; then `PING` both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from ._log import NET_ERRORS, log

HEARTBEAT_S = 1.0


def node_timeout() -> float:
    return float(os.environ.get("VLLM_STANDIN_NODE_TIMEOUT", "5") or 5)


def ready_timeout() -> float:
    return float(os.environ.get("VLLM_ENGINE_READY_TIMEOUT_S", "600") or 600)


class NodeLost(Exception):
    """A peer node went away."""


async def _heartbeat(writer: asyncio.StreamWriter) -> None:
    while True:
        writer.write(b"PING\n")
        await writer.drain()
        await asyncio.sleep(HEARTBEAT_S)


async def _watch(reader: asyncio.StreamReader) -> None:
    """Return when the peer closes or stays silent past the node timeout."""
    timeout = node_timeout()
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
        except NET_ERRORS:
            return
        if not line:
            return


class Head:
    """Rank 0's rendezvous: accepts the workers' connections on master_addr:master_port."""

    def __init__(self, addr: str, port: int, nnodes: int) -> None:
        self.addr = addr
        self.port = port
        self.nnodes = nnodes
        self.workers: dict[int, asyncio.StreamWriter] = {}
        self.all_in = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost_rank: int | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept,
            self.addr,
            self.port,
            reuse_address=True,
            family=socket.AF_INET6 if ":" in self.addr else socket.AF_INET,
        )
        log(
            "INFO",
            "multinode.py",
            f"Multi-node head listening on {self.addr}:{self.port}, waiting for "
            f"{self.nnodes - 1} worker node(s)",
        )

    async def wait_workers(self) -> None:
        await asyncio.wait_for(self.all_in.wait(), ready_timeout())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self.workers.values():
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            line = await asyncio.wait_for(reader.readline(), node_timeout())
        except NET_ERRORS:
            writer.close()
            return
        parts = line.decode(errors="replace").split()
        error = None
        rank = -1
        if len(parts) != 3 or parts[0] != "HELLO" or not (parts[1] + parts[2]).isdigit():
            error = "bad hello"
        else:
            rank, nnodes = int(parts[1]), int(parts[2])
            if nnodes != self.nnodes:
                error = f"nnodes mismatch: head has {self.nnodes}, worker has {nnodes}"
            elif not 1 <= rank < self.nnodes:
                error = f"node_rank {rank} out of range for nnodes {self.nnodes}"
            elif rank in self.workers:
                error = f"node_rank {rank} is already connected"
            elif self.all_in.is_set():
                error = "engine already running; restart the head to add a node"
        if error is not None:
            log("WARNING", "multinode.py", f"Rejected worker {peer}: {error}")
            writer.write(f"ERROR {error}\n".encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        self.workers[rank] = writer
        writer.write(b"OK\n")
        log(
            "INFO",
            "multinode.py",
            f"Worker node rank {rank} joined from {peer[0] if peer else '?'} "
            f"({len(self.workers) + 1}/{self.nnodes} nodes)",
        )
        if len(self.workers) == self.nnodes - 1:
            for w in self.workers.values():
                w.write(b"READY\n")
            self.all_in.set()
        beat = asyncio.ensure_future(_heartbeat(writer))
        try:
            await _watch(reader)
        finally:
            beat.cancel()
            writer.close()
            if self.workers.get(rank) is writer:
                del self.workers[rank]
            log(
                "WARNING" if not self.all_in.is_set() else "ERROR",
                "multinode.py",
                f"Worker node rank {rank} disconnected",
            )
            if self.all_in.is_set():
                self.lost_rank = rank
                self.lost.set()


async def run_worker(addr: str, port: int, rank: int, nnodes: int) -> int:
    """A headless worker: join the head, then stay until the head goes away (returns 1)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ready_timeout()
    attempt = 0
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), 5)
            break
        except NET_ERRORS as exc:
            attempt += 1
            if loop.time() >= deadline:
                log(
                    "ERROR",
                    "multinode.py",
                    f"Could not reach the head node at {addr}:{port} within "
                    f"VLLM_ENGINE_READY_TIMEOUT_S ({exc})",
                )
                return 1
            if attempt == 1 or attempt % 20 == 0:
                log(
                    "INFO",
                    "multinode.py",
                    f"Waiting for the head node at {addr}:{port} ({exc}); retrying",
                )
            await asyncio.sleep(0.5)
    writer.write(f"HELLO {rank} {nnodes}\n".encode())
    await writer.drain()
    try:
        reply = await asyncio.wait_for(reader.readline(), node_timeout())
    except NET_ERRORS:
        reply = b""
    if reply.strip() != b"OK":
        log(
            "ERROR",
            "multinode.py",
            f"Head node refused this worker: {reply.decode(errors='replace').strip() or 'closed'}",
        )
        return 1
    log("INFO", "multinode.py", f"Joined the head node at {addr}:{port} as node rank {rank}")
    beat = asyncio.ensure_future(_heartbeat(writer))
    timeout = node_timeout()
    try:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout)
            except NET_ERRORS:
                line = b""
            if not line:
                break
            if line.strip() == b"READY":
                log("INFO", "multinode.py", "All nodes joined; worker engine is running")
    finally:
        beat.cancel()
        writer.close()
    log("ERROR", "multinode.py", f"Lost the head node at {addr}:{port}; exiting")
    return 1
