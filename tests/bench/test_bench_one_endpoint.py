"""Servers with one of the two OpenAI endpoints: a 404 on the other names the path that answered
it and the `--endpoint` that works, and that one does."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from bench_helpers import free_port
from typer.testing import CliRunner

from servekit.cli import app

runner = CliRunner()
COMMON = ["--model", "plain", "--num-prompts", "1", "--input-len", "4", "--output-len", "3", "-q"]


def make_app(route: str) -> web.Application:
    """A server of the model 'plain' that streams three tokens on `route` only (aiohttp
    answers 404 elsewhere) and a 404 for any other model, as vLLM does."""

    async def stream(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("model") != "plain":
            return web.json_response({"error": {"message": "model not found"}}, status=404)
        chat = request.path.endswith("/chat/completions")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("one", "two", "three"):
            choice = {"index": 0, "delta": {"content": word}} if chat else {"text": word}
            await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "plain"}]})

    app = web.Application()
    app.router.add_post(route, stream)
    app.router.add_get("/v1/models", models)
    return app


def serve(route: str) -> Iterator[str]:
    port = free_port()
    loop = asyncio.new_event_loop()
    server = web.AppRunner(make_app(route))
    loop.run_until_complete(server.setup())
    loop.run_until_complete(web.TCPSite(server, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(server.cleanup())
    loop.close()


@pytest.fixture
def completions_only() -> Iterator[str]:
    yield from serve("/v1/completions")


@pytest.fixture
def chat_only() -> Iterator[str]:
    yield from serve("/v1/chat/completions")


def test_no_chat_endpoint_names_the_path_and_suggests_completions(completions_only: str) -> None:
    # An engine servekit does not recognise gets chat requests by default.
    result = runner.invoke(app, ["bench", completions_only, *COMMON])
    assert result.exit_code == 1, result.output
    assert "/v1/chat/completions answered HTTP 404" in result.output
    assert "--endpoint completions" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["bench", completions_only, *COMMON, "--endpoint", "completions"])
    assert result.exit_code == 0, result.output


def test_no_completions_endpoint_suggests_chat(chat_only: str) -> None:
    result = runner.invoke(app, ["bench", chat_only, *COMMON, "--endpoint", "completions"])
    assert result.exit_code == 1, result.output
    assert "/v1/completions answered HTTP 404" in result.output
    assert "--endpoint chat" in result.output
    assert runner.invoke(app, ["bench", chat_only, *COMMON]).exit_code == 0


def test_a_model_the_server_does_not_list_is_still_named(completions_only: str) -> None:
    args = ["bench", completions_only, *COMMON, "--endpoint", "completions", "--model", "other"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "does not serve 'other'" in result.output
