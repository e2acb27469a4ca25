"""An OpenAI-compatible server off the beaten path: no usage report, CRLF event separators,
multi-line events, SSE comments, and a 400 for `ignore_eos` (as strict servers answer)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from bench_helpers import bench, free_port

from servekit.bench.prompts import HfTokenizer

WORDS = ["alpha", "beta", "gamma", "delta"]


def make_app(tokens: int, done: bool = True) -> web.Application:
    """`done=False`: every answer after the first (the bench's probe) ends without [DONE]."""
    answered = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if "ignore_eos" in body:
            return web.json_response(
                {"error": {"message": "Unrecognized request argument supplied: ignore_eos"}},
                status=400,
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": keep-alive comment\r\n\r\n")
        count = min(int(body.get("max_tokens") or tokens), tokens)
        for i in range(count):
            delta = {"choices": [{"index": 0, "delta": {"content": " " + WORDS[i % 4]}}]}
            # One event over several data lines (joined with newlines, as SSE defines).
            lines = json.dumps(delta, indent=1).splitlines()
            event = "".join(f"data: {line}\r\n" for line in lines) + "\r\n"
            await response.write(event.encode())
            await asyncio.sleep(0.002)
        if done or not answered:
            await response.write(b"data: [DONE]\r\n\r\n")
        answered.append(count)
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "odd"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def serve(app: web.Application) -> Iterator[str]:
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


@pytest.fixture
def odd_server() -> Iterator[str]:
    yield from serve(make_app(tokens=6))


@pytest.fixture
def cut_server() -> Iterator[str]:
    yield from serve(make_app(tokens=3, done=False))


def test_a_stream_cut_before_done_is_a_failure(
    cut_server: str, word_tokenizer: HfTokenizer
) -> None:
    """A replica killed mid-answer: tokens came, then the stream ended without [DONE]."""
    result = bench(cut_server, word_tokenizer, model=None, scenario="concurrent", users=2,
                   num_prompts=2, input_len=5, output_len=6)  # fmt: skip
    (run,) = result.runs
    assert run.summary.completed == 0 and run.summary.failed == 2
    assert {r.error for r in run.requests} == {"stream cut after 3 chunks (no [DONE])"}
    assert all(r.ttft_s is not None for r in run.requests)


def test_strict_server_without_usage(odd_server: str, word_tokenizer: HfTokenizer) -> None:
    result = bench(odd_server, word_tokenizer, model=None, scenario="concurrent", users=2,
                   num_prompts=4, input_len=5, output_len=6)  # fmt: skip
    assert result.target.model == "odd"  # the only model the server lists
    assert result.target.engine == "unknown" and result.target.endpoint == "/v1/chat/completions"
    assert result.config.ignore_eos is False
    assert any("rejects ignore_eos" in w for w in result.warnings)
    assert any("reports no usage" in w and "tokenizer" in w for w in result.warnings)
    (run,) = result.runs
    assert run.summary.completed == 4
    for r in run.requests:
        # Words outside the tokenizer's vocabulary are one [UNK] each: still 6 tokens.
        assert (r.output_tokens, r.output_tokens_source) == (6, "tokenizer")
        assert len(r.itl_s) == 5 and r.server_prompt_tokens is None


def test_without_tokenizer_chunks_are_counted(odd_server: str) -> None:
    result = bench(odd_server, model="odd", input_len=5, output_len=6, num_prompts=2)
    assert all(
        (r.output_tokens, r.output_tokens_source) == (6, "chunks") for r in result.runs[0].requests
    )
    assert any("streamed chunks" in w for w in result.warnings)
