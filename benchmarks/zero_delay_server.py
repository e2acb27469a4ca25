"""A zero-delay OpenAI-compatible streaming server, fast enough that the client is what is measured.

Serves POST /v1/completions and /v1/chat/completions with `stream: true`: `max_tokens` token
chunks as server-sent events, then a usage chunk (when `stream_options.include_usage`) and
`data: [DONE]`. There are no sleeps: one pump callback writes the next chunk of every open stream
per event-loop turn, so streams interleave (each chunk is its own write, as a real engine's decode
steps are) without a coroutine switch per token. Everything else answers 404.

    python benchmarks/zero_delay_server.py --port 8123 [--workers N]

`--workers N` forks N processes sharing the port (SO_REUSEPORT). Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from typing import Any

WORDS = [b" the", b" quick", b" brown", b" fox", b" jumps", b" over", b" a", b" lazy", b" dog"]
MAX_BODY = 16 * 1024 * 1024


class Stream:
    """One response being streamed: the frames still to write."""

    __slots__ = ("head", "next_index", "request_id", "tail", "total", "transport", "usage")

    def __init__(self, transport: asyncio.Transport, body: dict[str, Any], chat: bool) -> None:
        self.transport = transport
        self.total = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        self.next_index = 0
        self.request_id = "cmpl-zero"
        options = body.get("stream_options") or {}
        model = json.dumps(body.get("model", "m")).encode()
        if chat:
            self.head = (
                b'{"id":"chatcmpl-zero","object":"chat.completion.chunk","created":0,"model":'
                + model
                + b',"choices":[{"index":0,"delta":{"content":"'
            )
            self.tail = b'"},"logprobs":null,"finish_reason":null}]}'
        else:
            self.head = (
                b'{"id":"cmpl-zero","object":"text_completion","created":0,"model":'
                + model
                + b',"choices":[{"index":0,"text":"'
            )
            self.tail = b'","logprobs":null,"finish_reason":null,"stop_reason":null}]}'
        prompt = body.get("prompt") or body.get("messages") or ""
        prompt_tokens = len(str(prompt).split())
        self.usage = (
            b'{"id":"cmpl-zero","object":"text_completion","created":0,"model":'
            + model
            + b',"choices":[],"usage":{"prompt_tokens":'
            + str(prompt_tokens).encode()
            + b',"completion_tokens":'
            + str(self.total).encode()
            + b',"total_tokens":'
            + str(prompt_tokens + self.total).encode()
            + b"}}"
            if options.get("include_usage")
            else b""
        )

    def write_next(self) -> bool:
        """Write one chunk (or the closing frames); False once the response is complete."""
        if self.transport.is_closing():
            return False
        if self.next_index < self.total:
            event = b"data: " + self.head + WORDS[self.next_index % 9] + self.tail + b"\n\n"
            self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.next_index += 1
            return True
        end = b""
        if self.usage:
            event = b"data: " + self.usage + b"\n\n"
            end += b"%x\r\n%s\r\n" % (len(event), event)
        done = b"data: [DONE]\n\n"
        end += b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
        self.transport.write(end)
        return False


class Pump:
    """Writes one chunk of every open stream per loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams: list[Stream] = []
        self.scheduled = False

    def add(self, stream: Stream) -> None:
        self.streams.append(stream)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.streams = [s for s in self.streams if s.write_next()]
        if self.streams:
            self.loop.call_soon(self.run)
        else:
            self.scheduled = False


class Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive connection: parse requests, hand streams to the pump."""

    def __init__(self, pump: Pump) -> None:
        self.pump = pump
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length > MAX_BODY:
                self.reply(413, b"")
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(head[0].split(" ")[1], body)

    def reply(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )

    def handle(self, path: str, raw: bytes) -> None:
        assert self.transport is not None
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self.reply(404, b'{"detail":"Not Found"}')
            return
        body = json.loads(raw or b"{}")
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self.pump.add(Stream(self.transport, body, chat=path.endswith("chat/completions")))


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    pump = Pump(loop)
    server = await loop.create_server(lambda: Connection(pump), sock=sock, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    sock.setblocking(False)
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(sock))
            os._exit(0)
        children.append(pid)
    print(f"zero-delay server on {args.host}:{args.port} ({args.workers} workers)", flush=True)
    try:
        asyncio.run(serve(sock))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
    sys.exit(0)


if __name__ == "__main__":
    main()
