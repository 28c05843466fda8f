"""A fake LLM server speaking Ollama's and OpenAI's chat APIs.

Based on the published API references, not on either server's code:

* Ollama ``POST /api/chat`` (github.com/ollama/ollama, docs/api.md): request
  ``{"model", "messages": [{"role", "content"}], "stream", "format", "options"}``
  where ``format`` is ``"json"`` or a JSON schema; non-streaming response
  ``{"model", "created_at", "message": {"role": "assistant", "content"},
  "done": true, "done_reason": "stop", "total_duration", ...}``; errors as
  ``{"error": "..."}``.
* OpenAI ``POST /v1/chat/completions`` (platform.openai.com/docs/api-reference/chat):
  request ``{"model", "messages", "response_format": {"type": "json_schema",
  "json_schema": {"name", "schema", "strict"}}}``; response ``{"id", "object":
  "chat.completion", "created", "model", "choices": [{"index": 0, "message":
  {"role": "assistant", "content", "refusal": null}, "finish_reason": "stop"}],
  "usage"}``; a missing or wrong ``Authorization: Bearer`` key gives 401 with
  ``{"error": {"message", "type": "invalid_request_error", "param": null,
  "code": "invalid_api_key"}}``.

Each test sets what the next answers are (``reply``), so the client's
handling of good answers, invalid JSON, schema violations, slow replies and
server errors can be exercised without a model. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Reply:
    """What the fake answers next.

    ``content`` is the assistant's text (a dict is JSON-encoded, a str sent as is);
    ``status`` other than 200 sends the provider's error shape; ``delay`` seconds are
    waited before answering (for timeouts); ``raw`` replaces the whole body."""

    content: Any = None
    status: int = 200
    delay: float = 0.0
    raw: str | None = None


@dataclass
class FakeLLM:
    api_key: str | None = None  # OpenAI side: required Bearer key when set
    replies: list[Reply] = field(default_factory=list)  # consumed in order; last one repeats
    requests: list[dict] = field(default_factory=list)  # (path, headers, json body) as received
    server: TestServer | None = None

    def reply(self, content: Any = None, status: int = 200, delay: float = 0.0,
              raw: str | None = None) -> None:
        self.replies = [Reply(content, status, delay, raw)]

    def _next(self) -> Reply:
        if not self.replies:
            return Reply(content={})
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    async def _next_reply(self) -> Reply:
        """The scripted answer, after its delay (both APIs answer raw text the same way)."""
        reply = self._next()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return reply

    @property
    def url(self) -> str:
        assert self.server is not None, "start() first"
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        return app

    async def start(self) -> FakeLLM:
        self.server = TestServer(self.app())
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _record(self, request: web.Request) -> dict | None:
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.requests.append({"path": request.path, "headers": dict(request.headers),
                              "json": body})
        return body

    @staticmethod
    def _text(content: Any) -> str:
        return content if isinstance(content, str) else json.dumps(content)

    async def _ollama_chat(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if not isinstance(body, dict) or "model" not in body:
            return web.json_response({"error": "model is required"}, status=400)
        reply = await self._next_reply()
        if reply.raw is not None:
            return web.Response(text=reply.raw, status=reply.status,
                                content_type="application/json")
        if reply.status != 200:
            return web.json_response({"error": "model runner has unexpectedly stopped"},
                                     status=reply.status)
        return web.json_response({
            "model": body["model"],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "message": {"role": "assistant", "content": self._text(reply.content)},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": 42,
            "prompt_eval_duration": 200_000,
            "eval_count": 24,
            "eval_duration": 600_000,
        })

    async def _openai_chat(self, request: web.Request) -> web.Response:
        if self.api_key is not None:
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {self.api_key}":
                await self._record(request)
                given = auth.removeprefix("Bearer ")
                hint = f"sk-...{given[-4:]}" if given else "none"
                return web.json_response({"error": {
                    "message": f"Incorrect API key provided: {hint}.",
                    "type": "invalid_request_error", "param": None,
                    "code": "invalid_api_key"}}, status=401)
        body = await self._record(request)
        if not isinstance(body, dict) or "model" not in body or "messages" not in body:
            return web.json_response({"error": {
                "message": "you must provide a model parameter",
                "type": "invalid_request_error", "param": None, "code": None}}, status=400)
        reply = await self._next_reply()
        if reply.raw is not None:
            return web.Response(text=reply.raw, status=reply.status,
                                content_type="application/json")
        if reply.status != 200:
            return web.json_response({"error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error", "param": None, "code": None}}, status=reply.status)
        return web.json_response({
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self._text(reply.content),
                            "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 42, "completion_tokens": 24, "total_tokens": 66},
            "system_fingerprint": "fp_fake",
        })
