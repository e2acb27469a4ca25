"""A small HTTP/1.1 server on stdlib asyncio streams, for the stand-in's OpenAI surface.

Why not http.server: it is thread-per-connection and cannot hold a thousand streaming clients on one
core. This one keeps connections alive, reads Content-Length and chunked bodies, answers
`Expect: 100-continue`, and streams responses with chunked transfer encoding, flushing every chunk
(`await writer.drain()`) so a benchmark client sees each token the moment it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ClientGone(Exception):
    """The peer closed the connection while we were writing to it."""


class BadRequest(Exception):
    """The request could not be parsed."""


class Request:
    """One parsed HTTP request: method, path, query, lower-cased headers and body."""

    __slots__ = ("body", "headers", "method", "path", "query", "version")

    def __init__(
        self, method: str, target: str, version: str, headers: dict[str, str], body: bytes
    ) -> None:
        parts = urlsplit(target)
        self.method = method
        self.path = parts.path or "/"
        self.query = dict(parse_qsl(parts.query))
        self.version = version
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """Decode the body as JSON (raises ValueError on bad input)."""
        return json.loads(self.body.decode("utf-8") or "null")

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"


class Responder:
    """Writes one response: either `send()` a whole body or `start()`, `write()`..., `end()`."""

    __slots__ = ("_chunked", "_writer", "keep_alive", "started")

    def __init__(self, writer: asyncio.StreamWriter, keep_alive: bool, http11: bool) -> None:
        self._writer = writer
        self.keep_alive = keep_alive
        self._chunked = http11
        self.started = False

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append("connection: keep-alive" if self.keep_alive else "connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "application/json",
        headers: list[tuple[str, str]] | None = None,
        head_only: bool = False,
    ) -> None:
        """Send a complete response with a Content-Length."""
        hdrs = [("content-length", str(len(body)))]
        if content_type:
            hdrs.append(("content-type", content_type))
        hdrs += headers or []
        self.started = True
        self._writer.write(self._head(status, hdrs) + (b"" if head_only else body))
        await self._drain()

    async def send_json(self, status: int, obj: Any, head_only: bool = False) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        await self.send(status, body, head_only=head_only)

    async def start(
        self, status: int, content_type: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Start a streamed response (chunked on HTTP/1.1, close-delimited on HTTP/1.0)."""
        hdrs = [("content-type", content_type)]
        if self._chunked:
            hdrs.append(("transfer-encoding", "chunked"))
        else:
            self.keep_alive = False
        hdrs += headers or []
        self.started = True
        self._writer.write(self._head(status, hdrs))
        await self._drain()

    async def write(self, data: bytes) -> None:
        """Send one piece of a streamed body and flush it at once."""
        if self._chunked:
            self._writer.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._writer.write(data)
        await self._drain()

    async def end(self) -> None:
        if self._chunked:
            self._writer.write(b"0\r\n\r\n")
            await self._drain()

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone() from exc
        if self._writer.transport.is_closing():
            raise ClientGone()


Handler = Callable[[Request, Responder], Awaitable[None]]


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise BadRequest("truncated chunked body")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise BadRequest("body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or "0")
    if length < 0 or length > MAX_BODY_BYTES:
        raise BadRequest("bad content-length")
    return await reader.readexactly(length) if length else b""


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """Read one request; None at a clean end of the connection."""
    line = await reader.readline()
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests
        line = await reader.readline()
    if not line:
        return None
    try:
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    except ValueError as exc:
        raise BadRequest("bad request line") from exc
    headers: dict[str, str] = {}
    size = len(line)
    while True:
        hline = await reader.readline()
        size += len(hline)
        if size > MAX_HEADER_BYTES:
            raise BadRequest("headers too large")
        if hline in (b"\r\n", b"\n"):
            break
        if not hline:
            raise BadRequest("truncated headers")
        name, _, value = hline.decode("latin-1").partition(":")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    body = await _read_body(reader, headers)
    return Request(method.upper(), target, version.strip(), headers, body)


class HttpServer:
    """Serves `handler` on an already bound socket once `start()` is called (then it listens)."""

    def __init__(self, handler: Handler, on_error: Callable[[BaseException], None]) -> None:
        self._handler = handler
        self._on_error = on_error
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket, backlog: int = 4096) -> None:
        """Call listen() on `sock` (connects were refused until now) and serve it."""
        sock.listen(backlog)
        self._server = await asyncio.start_server(self._connection, sock=sock, backlog=backlog)

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    req = await read_request(reader, writer)
                except BadRequest as exc:
                    resp = Responder(writer, False, True)
                    await resp.send(400, json.dumps({"detail": str(exc)}).encode())
                    return
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                if req is None:
                    return
                resp = Responder(writer, req.keep_alive, req.version != "HTTP/1.0")
                try:
                    await self._handler(req, resp)
                except ClientGone:
                    return
                except Exception as exc:  # answer 500 rather than drop the connection
                    self._on_error(exc)
                    if resp.started:
                        return
                    resp.keep_alive = False
                    body = {
                        "error": {
                            "message": str(exc),
                            "type": "InternalServerError",
                            "param": None,
                            "code": 500,
                        }
                    }
                    with contextlib.suppress(ClientGone):
                        await resp.send_json(500, body)
                    return
                if not resp.keep_alive:
                    return
        except asyncio.CancelledError:
            pass
        except ClientGone:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
