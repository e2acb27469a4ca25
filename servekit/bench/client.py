"""Stream one completion request and time its chunks: the client's hot path.

One aiohttp session holds a pool of keep-alive connections (one per request in flight). Each
response is read as raw bytes as they arrive; the time of a read is taken once and given to every
server-sent event in it, so the per-token work is one `json.loads` and a list append.

TTFT is request sent → first chunk that carries text; ITL is every gap between later chunks that
carry text; E2E latency is request sent → last such chunk (as `vllm bench serve` times them).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from servekit.bench.schema import RequestStatus

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
_ERROR_BODY_LIMIT = 2000


@dataclass(slots=True)
class Timing:
    """One request's raw measurement (perf_counter seconds)."""

    index: int
    request_id: str
    prompt_tokens: int
    start: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    status: RequestStatus = "ok"
    http_status: int | None = None
    error: str | None = None
    usage_prompt_tokens: int | None = None
    usage_output_tokens: int | None = None
    finish_reason: str | None = None
    text: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to send requests."""

    base_url: str
    path: str
    model: str
    api_key: str | None = None
    output_len: int = 128
    ignore_eos: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path

    @property
    def chat(self) -> bool:
        return self.path == CHAT

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, prompt: str, max_tokens: int | None = None) -> bytes:
        """The JSON request for one prompt (greedy, streamed, usage asked for)."""
        tokens = self.output_len if max_tokens is None else max_tokens
        payload: dict[str, Any] = {"model": self.model, "stream": True, "temperature": 0.0}
        if self.chat:
            payload["messages"] = [{"role": "user", "content": prompt}]
            payload["max_completion_tokens"] = tokens
            payload["max_tokens"] = tokens  # Ollama and older servers read only this one
        else:
            payload["prompt"] = prompt
            payload["max_tokens"] = tokens
        payload["stream_options"] = {"include_usage": True}
        if self.ignore_eos:
            payload["ignore_eos"] = True
        payload.update(self.extra_body)
        return json.dumps(payload).encode()


def _error_message(raw: bytes) -> str:
    text = raw[:_ERROR_BODY_LIMIT].decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj.get("message")))
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if err is not None:
            return str(err)
    return text


def _chunk_text(choice: dict[str, Any]) -> str | None:
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        if delta:
            text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
    return text


class StreamingClient:
    """Sends streamed requests over one connection pool and times them."""

    def __init__(self, endpoint: Endpoint, timeout_s: float, collect_text: bool = False) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.collect_text = collect_text
        self._session: aiohttp.ClientSession | None = None
        self._headers = endpoint.headers()
        self._url = endpoint.url

    async def __aenter__(self) -> StreamingClient:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            auto_decompress=False,
            read_bufsize=2**16,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def warm(self, connections: int) -> None:
        """Open `connections` keep-alive connections now, so no timed request pays a handshake.

        Each is a concurrent `GET /v1/models` (any answer will do); its connection then waits in
        the pool for the run's requests.
        """
        assert self._session is not None, "use `async with StreamingClient(...)`"
        session = self._session
        url = self.endpoint.base_url.rstrip("/") + "/v1/models"
        headers = {k: v for k, v in self._headers.items() if k == "Authorization"}

        async def one() -> None:
            try:
                async with asyncio.timeout(min(self.timeout_s, 30.0)):
                    async with session.get(url, headers=headers) as response:
                        await response.read()
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass

        await asyncio.gather(*(one() for _ in range(connections)))

    async def send(self, timing: Timing, body: bytes) -> Timing:
        """Send one request and fill in `timing`; never raises for request failures."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._send(timing, body)
        except TimeoutError:
            timing.status = "timeout"
            timing.error = f"no complete answer within {self.timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as error:
            timing.status = "error"
            timing.error = f"{type(error).__name__}: {error}" if str(error) else repr(error)
        return timing

    async def _send(self, timing: Timing, body: bytes) -> None:
        assert self._session is not None, "use `async with StreamingClient(...)`"
        headers = dict(self._headers)
        headers["X-Request-Id"] = timing.request_id
        if self.collect_text:
            timing.text = []
        timing.start = time.perf_counter()
        async with self._session.post(self._url, data=body, headers=headers) as response:
            timing.http_status = response.status
            if response.status != 200:
                timing.status = "error"
                timing.error = f"HTTP {response.status}: {_error_message(await response.read())}"
                return
            done = await _read_stream(response, timing)
            if not done and timing.status == "ok":
                # vLLM and Ollama end every stream with [DONE]: without it the answer was cut
                timing.status = "error"
                timing.error = (
                    f"stream cut after {len(timing.chunk_times)} chunks (no [DONE])"
                    if timing.chunk_times
                    else "stream closed without a [DONE] or any token"
                )


async def _read_stream(response: aiohttp.ClientResponse, timing: Timing) -> bool:
    """Time each server-sent event of a streamed answer as it arrives; True at `[DONE]`.

    This loop runs once per token, so it keeps its work per event inline: one `json.loads`, a
    few dict reads and an append.
    """
    perf = time.perf_counter
    times = timing.chunk_times
    parts = timing.text
    loads = json.loads
    pending = b""
    done = False
    async for data in response.content.iter_any():
        now = perf()
        if pending:
            data = pending + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        pending = events.pop()
        for event in events:
            if event.startswith(b"data: ") and b"\n" not in event:
                payload = event[6:]
            else:
                payload = b"\n".join(
                    line[5:].lstrip(b" ")
                    for line in event.split(b"\n")
                    if line.startswith(b"data:")
                )
                if not payload:
                    continue
            if payload == b"[DONE]":
                done = True
                continue
            obj = loads(payload)
            choices = obj.get("choices")
            if choices:
                choice = choices[0]
                text = _chunk_text(choice)
                if text:
                    times.append(now)
                    if parts is not None:
                        parts.append(text)
                if choice.get("finish_reason"):
                    timing.finish_reason = choice["finish_reason"]
            usage = obj.get("usage")
            if usage:
                timing.usage_prompt_tokens = usage.get("prompt_tokens")
                timing.usage_output_tokens = usage.get("completion_tokens")
            if "error" in obj:
                timing.status = "error"
                error = obj["error"]
                message = error.get("message") if isinstance(error, dict) else error
                timing.error = f"error after {len(times)} chunks: {message}"
    return done
