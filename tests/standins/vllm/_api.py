"""vLLM's HTTP surface: /health, /ping, /version, /metrics, /v1/models and the OpenAI completions.

Shapes follow vLLM 0.33.0: errors are `{"error": {"message", "type", "param", "code"}}`, the API
key middleware answers 401 `{"error": "Unauthorized"}` on `/v1` routes only, streams are
server-sent events `data: {json}\\n\\n` ending with `data: [DONE]\\n\\n`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ._engine import TOKEN_TEXT, Engine, chat_prompt_tokens, count_tokens
from ._http import ClientGone, Request, Responder
from ._prefix import chat_token_list, completion_token_list

VERSION = "0.33.0"
SSE = "text/event-stream; charset=utf-8"
DONE = b"data: [DONE]\n\n"
_GUARDED = ("/v1", "/v2", "/inference", "/cohere")


class ApiError(Exception):
    """An error answered in vLLM's JSON shape."""

    def __init__(
        self, status: int, message: str, type_: str = "BadRequestError", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass
class Plan:
    """What one generation request will do."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    n_tokens: int
    finish_reason: str
    fail_at: int | None
    include_usage: bool
    continuous_usage: bool
    prompt: list[str]


def _int_param(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(400, f"{name} must be an integer, got {value!r}.", param=name)
        return value
    return None


class Api:
    """Routes one parsed request; holds the served names, keys and the engine."""

    def __init__(
        self, engine: Engine, served_names: list[str], root: str, api_keys: list[str]
    ) -> None:
        self.engine = engine
        self.names = served_names
        self.root = root
        self.api_keys = {f"Bearer {k}" for k in api_keys}
        self.healthy = True
        self.created = int(time.time())

    async def handle(self, req: Request, resp: Responder) -> None:
        path = req.path
        if (
            self.api_keys
            and req.method != "OPTIONS"
            and path.startswith(_GUARDED)
            and req.headers.get("authorization", "") not in self.api_keys
        ):
            await resp.send_json(401, {"error": "Unauthorized"})
            return
        route = _ROUTES.get(path)
        if route is None:
            await resp.send_json(404, {"detail": "Not Found"})
            return
        methods, name = route
        if req.method not in methods:
            await resp.send_json(405, {"detail": "Method Not Allowed"})
            return
        try:
            await getattr(self, name)(req, resp)
        except ApiError as err:
            if resp.started:
                raise
            await resp.send_json(err.status, err.body())

    async def health(self, req: Request, resp: Responder) -> None:
        await resp.send(200 if self.healthy else 503, b"", content_type=None)

    async def version(self, req: Request, resp: Responder) -> None:
        await resp.send_json(200, {"version": VERSION})

    async def metrics(self, req: Request, resp: Responder) -> None:
        body = self.engine.render_metrics().encode()
        await resp.send(200, body, content_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(self, req: Request, resp: Responder) -> None:
        data = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": self.root,
                "parent": None,
                "max_model_len": self.engine.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{uuid.uuid4().hex}",
                        "object": "model_permission",
                        "created": self.created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in self.names
        ]
        await resp.send_json(200, {"object": "list", "data": data})

    async def chat(self, req: Request, resp: Responder) -> None:
        await self._generate(req, resp, chat=True)

    async def completions(self, req: Request, resp: Responder) -> None:
        await self._generate(req, resp, chat=False)

    # -- generation ---------------------------------------------------------------------------

    def _plan(self, req: Request, body: dict[str, Any], chat: bool) -> Plan:
        model = body.get("model")
        if model is not None and model not in self.names:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise ApiError(
                    400, "messages: Input should be a valid list of messages", param="messages"
                )
            prompt_tokens = chat_prompt_tokens(messages)
            prompt = chat_token_list(messages)
            max_tokens = _int_param(body, "max_completion_tokens", "max_tokens")
        else:
            prompt_tokens = self._completion_prompt_tokens(body.get("prompt"))
            prompt = completion_token_list(body.get("prompt"))
            max_tokens = _int_param(body, "max_tokens")
        n = _int_param(body, "n")
        if n not in (None, 1):
            raise ApiError(400, "The stand-in engine only supports n=1.", param="n")
        min_tokens = _int_param(body, "min_tokens") or 0
        limit = self.engine.max_model_len
        if prompt_tokens >= limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, "
                f"your request has {prompt_tokens} input tokens. Please reduce the "
                "length of the input messages.",
            )
        if max_tokens is None:
            max_tokens = limit - prompt_tokens
        elif max_tokens < 1:
            raise ApiError(
                400, f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens"
            )
        elif prompt_tokens + max_tokens > limit:
            raise ApiError(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: "
                f"{max_tokens}. This model's maximum context length is {limit} tokens "
                f"and your request has {prompt_tokens} input tokens ({max_tokens} > "
                f"{limit} - {prompt_tokens}).",
            )
        if min_tokens > max_tokens:
            raise ApiError(
                400,
                f"min_tokens must be less than or equal to max_tokens={max_tokens}"
                f", got {min_tokens}.",
                param="min_tokens",
            )
        knobs = self.engine.knobs
        n_tokens, reason = max_tokens, "length"
        if knobs.eos_after is not None and not body.get("ignore_eos"):
            stop_at = max(knobs.eos_after, min_tokens)
            if stop_at < max_tokens:
                n_tokens, reason = stop_at, "stop"
        fail_at = knobs.fail_after_tokens
        if fail_at is not None and fail_at >= n_tokens:
            fail_at = None
        opts = body.get("stream_options") or {}
        base = req.headers.get("x-request-id") or uuid.uuid4().hex
        return Plan(
            request_id=("chatcmpl-" if chat else "cmpl-") + base,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            n_tokens=n_tokens,
            finish_reason=reason,
            fail_at=fail_at,
            include_usage=bool(opts.get("include_usage")),
            continuous_usage=bool(opts.get("continuous_usage_stats")),
            prompt=prompt,
        )

    @staticmethod
    def _completion_prompt_tokens(prompt: Any) -> int:
        if isinstance(prompt, str):
            return count_tokens(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        if isinstance(prompt, list) and len(prompt) == 1:
            return Api._completion_prompt_tokens(prompt[0])
        if isinstance(prompt, list) and len(prompt) > 1:
            raise ApiError(
                400, "The stand-in engine serves one prompt per request.", param="prompt"
            )
        raise ApiError(
            400, "prompt: Input should be a string or a list of token ids", param="prompt"
        )

    async def _generate(self, req: Request, resp: Responder, chat: bool) -> None:
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"JSON decode error: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        plan = self._plan(req, body, chat)
        model = body.get("model") or self.names[0]
        stream = bool(body.get("stream"))
        if stream:
            await resp.start(200, SSE)
        await self._run(plan, model, chat, stream, resp)

    async def _run(self, plan: Plan, model: str, chat: bool, stream: bool, resp: Responder) -> None:
        eng = self.engine
        knobs = eng.knobs
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if knobs.chunk_log is not None:
            eng.log_chunk(plan.request_id, -1, "request")  # arrival: a client's TTFT starts here
        await eng.admit()
        if eng.prefix_cache is not None:
            eng.prefix_cache.admit(plan.prompt)
        start = loop.time()
        rid = plan.request_id
        created = int(time.time())
        blocks = eng.blocks_for(plan.prompt_tokens)
        eng.used_blocks += blocks
        eng.prompt_tokens_total += plan.prompt_tokens
        interval = 1.0 / knobs.tokens_per_s if knobs.tokens_per_s > 0 else 0.0
        head, tail, last_tail = self._chunk_frame(rid, created, model, chat)
        sent = 0
        reason = "abort"
        last = start
        logging = eng.knobs.chunk_log is not None
        try:
            if not stream:
                sent, reason = await self._run_whole(plan, start, interval, arrived)
                if reason == "error":
                    await self._fail(plan, resp, stream=False)
                else:
                    await resp.send_json(
                        200, self._full_response(plan, rid, created, model, chat, sent)
                    )
                return
            if knobs.ttft > 0:
                await asyncio.sleep(knobs.ttft)
            for i in range(plan.n_tokens):
                if i and interval:
                    delay = start + knobs.ttft + i * interval - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif i:
                    await asyncio.sleep(0)  # a yield, not a timed sleep: streams take turns
                if plan.fail_at is not None and i == plan.fail_at:
                    reason = "error"
                    await self._fail(plan, resp, stream=True)
                    return
                if i == 0 and chat:
                    await resp.write(self._role_chunk(rid, created, model))
                    if logging:
                        eng.log_chunk(rid, -1, "role")
                final = i == plan.n_tokens - 1
                if plan.continuous_usage:
                    chunk = self._usage_token_chunk(plan, rid, created, model, chat, i, final)
                else:
                    end = last_tail[plan.finish_reason] if final else tail
                    chunk = head + _TOKEN_JSON[i % len(_TOKEN_JSON)] + end
                await resp.write(chunk)
                if logging:
                    eng.log_chunk(rid, i, "token")
                now = loop.time()
                if i == 0:
                    eng.ttft.observe(now - arrived)
                else:
                    eng.itl.observe(now - last)
                last = now
                sent += 1
                eng.generation_tokens_total += 1
                if (plan.prompt_tokens + sent) % eng.block_size == 1:
                    eng.used_blocks += 1
                    blocks += 1
            reason = plan.finish_reason
            if plan.include_usage:
                await resp.write(self._usage_chunk(plan, rid, created, model, chat, sent))
                if logging:
                    eng.log_chunk(rid, -1, "usage")
            if logging:
                eng.flush_log()  # a client that has read [DONE] finds every token line
            await resp.write(DONE)
            if logging:
                eng.log_chunk(rid, -1, "done")
                eng.flush_log()
            await resp.end()
        finally:
            eng.used_blocks -= blocks
            eng.success[reason] += 1
            eng.e2e.observe(loop.time() - arrived)
            eng.prompt_hist.observe(plan.prompt_tokens)
            eng.gen_hist.observe(sent)
            eng.release()
            if logging:
                eng.flush_log()

    async def _run_whole(
        self, plan: Plan, start: float, interval: float, arrived: float
    ) -> tuple[int, str]:
        """A non-streamed request: wait until its last token is due, then count it all."""
        eng = self.engine
        loop = asyncio.get_running_loop()
        n = plan.fail_at if plan.fail_at is not None else plan.n_tokens
        first = start + eng.knobs.ttft
        end = first + max(0, n - 1) * interval
        await asyncio.sleep(max(0.0, end - loop.time()))
        if n:
            eng.ttft.observe(first - arrived)
        for _ in range(n - 1):
            eng.itl.observe(interval)
        eng.generation_tokens_total += n
        return n, "error" if plan.fail_at is not None else plan.finish_reason

    async def _fail(self, plan: Plan, resp: Responder, stream: bool) -> None:
        err = ApiError(
            500,
            f"Stand-in engine failure after {plan.fail_at} tokens "
            "(VLLM_STANDIN_FAIL_AFTER_TOKENS).",
            "InternalServerError",
        )
        if not stream:
            await resp.send_json(500, err.body())
            return
        await resp.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
        self.engine.log_chunk(plan.request_id, -1, "error")
        self.engine.flush_log()
        await resp.write(DONE)
        self.engine.log_chunk(plan.request_id, -1, "done")
        self.engine.flush_log()
        await resp.end()

    # -- chunk shapes -------------------------------------------------------------------------

    @staticmethod
    def _chunk_frame(
        rid: str, created: int, model: str, chat: bool
    ) -> tuple[bytes, bytes, dict[str, bytes]]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        pre = (
            f'data: {{"id":{json.dumps(rid)},"object":"{obj}","created":{created},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,'
        )
        if chat:
            head = (pre + '"delta":{"content":').encode()
            tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
            last = {
                r: f'}},"logprobs":null,"finish_reason":"{r}","stop_reason":null}}]}}\n\n'.encode()
                for r in ("stop", "length")
            }
        else:
            head = (pre + '"text":').encode()
            tail = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            last = {
                r: f',"logprobs":null,"finish_reason":"{r}","stop_reason":null}}]}}\n\n'.encode()
                for r in ("stop", "length")
            }
        return head, tail, last

    @staticmethod
    def _role_chunk(rid: str, created: int, model: str) -> bytes:
        obj = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    @staticmethod
    def _usage(plan: Plan, sent: int) -> dict[str, int]:
        return {
            "prompt_tokens": plan.prompt_tokens,
            "total_tokens": plan.prompt_tokens + sent,
            "completion_tokens": sent,
        }

    def _usage_token_chunk(
        self, plan: Plan, rid: str, created: int, model: str, chat: bool, i: int, final: bool
    ) -> bytes:
        text = TOKEN_TEXT[i % len(TOKEN_TEXT)]
        choice: dict[str, Any] = {"index": 0}
        if chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = None
        choice["finish_reason"] = plan.finish_reason if final else None
        if final or not chat:
            choice["stop_reason"] = None
        obj: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": self._usage(plan, i + 1),
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def _usage_chunk(
        self, plan: Plan, rid: str, created: int, model: str, chat: bool, sent: int
    ) -> bytes:
        obj: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [],
            "usage": self._usage(plan, sent),
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def _full_response(
        self, plan: Plan, rid: str, created: int, model: str, chat: bool, sent: int
    ) -> dict[str, Any]:
        text = "".join(TOKEN_TEXT[i % len(TOKEN_TEXT)] for i in range(sent))
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning_content": None,
                },
                "logprobs": None,
                "finish_reason": plan.finish_reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": plan.finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            obj = "text_completion"
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {**self._usage(plan, sent), "prompt_tokens_details": None},
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }


_TOKEN_JSON = [json.dumps(t).encode() for t in TOKEN_TEXT]

_ROUTES: dict[str, tuple[tuple[str, ...], str]] = {
    "/health": (("GET",), "health"),
    "/ping": (("GET", "POST"), "health"),
    "/version": (("GET",), "version"),
    "/metrics": (("GET",), "metrics"),
    "/v1/models": (("GET",), "models"),
    "/v1/chat/completions": (("POST",), "chat"),
    "/v1/completions": (("POST",), "completions"),
}

__all__ = ["Api", "ApiError", "ClientGone"]
