"""OpenAI-compatible HTTP: /v1/completions, /v1/chat/completions (streamed as SSE or whole), /v1/models,
plus /health, /ready and /metrics. JSON in, core call, JSON out."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.auth import ApiKeys
from gateway.cache.key import tenant_from_authorization
from gateway.core import GatewayCore, Generation
from gateway.errors import PayloadTooLarge, RequestError
from gateway.openai_request import OpenAIRequest, parse_openai_request
from gateway.openai_response import ResponseBuilder, error_response
from gateway.schema import Finished, TextDelta
from services.common.errors import FlashStreamError, NotFound
from services.common.metrics import add_status_routes

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else _dumps(obj)) + b"\n\n"


class HttpApi:
    """The aiohttp application of the gateway."""

    def __init__(self, core: GatewayCore, api_keys: ApiKeys, max_body_bytes: int) -> None:
        self._core = core
        self._keys = api_keys
        self._max_body_bytes = max_body_bytes
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._middleware])
        self.app.router.add_post("/v1/completions", self._completions)
        self.app.router.add_post("/v1/chat/completions", self._chat_completions)
        self.app.router.add_get("/v1/models", self._models)
        add_status_routes(self.app, core.metrics, core.is_ready)

    def _error(self, exc: FlashStreamError) -> web.Response:
        self._core.record_error(exc)
        status, body, headers = error_response(exc)
        return web.Response(status=status, body=_dumps(body), content_type="application/json", headers=headers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path not in OPEN_PATHS:
                self._keys.check(request.headers.get("Authorization"))
            return await handler(request)
        except FlashStreamError as exc:
            return self._error(exc)
        except web.HTTPRequestEntityTooLarge:
            return self._error(PayloadTooLarge(f"the request body is larger than {self._max_body_bytes} bytes"))
        except web.HTTPNotFound:
            return self._error(NotFound(f"no route for {request.method} {request.path}"))
        except web.HTTPMethodNotAllowed:
            return self._error(RequestError(f"method {request.method} is not allowed on {request.path}", None,
                                            "method_not_allowed"))

    async def _models(self, _: web.Request) -> web.Response:
        data = [
            {"id": c.id, "object": "model", "created": 0, "owned_by": c.owned_by, "max_model_len": c.max_model_len,
             "revision": c.revision}
            for c in self._core.list_models()
        ]
        return web.json_response({"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, http: web.Request, chat: bool) -> web.StreamResponse:
        raw = await http.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}", None, "invalid_json") from exc
        parsed = parse_openai_request(body, chat)
        tenant = tenant_from_authorization(http.headers.get("Authorization"), self._keys.enabled)
        generation = self._core.start(parsed.request, tenant=tenant)
        try:
            # The first event decides the status: an early error (e.g. a prompt too long) still gets its own code.
            first = await anext(generation)
            builder = ResponseBuilder(generation.request_id, generation.model, generation.created, chat,
                                      parsed.logprobs, parsed.parses_tool_calls)
            if parsed.stream:
                return await self._stream(http, parsed, builder, generation, first)
            deltas: list[TextDelta] = []
            event = first
            while not isinstance(event, Finished):
                deltas.append(event)
                event = await anext(generation)
            return web.Response(body=_dumps(builder.full(deltas, event)), content_type="application/json")
        finally:
            generation.close()  # a disconnected client cancels the handler; this aborts upstream

    async def _stream(
        self,
        http: web.Request,
        parsed: OpenAIRequest,
        builder: ResponseBuilder,
        generation: Generation,
        first: TextDelta | Finished,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(http)
        event = first
        try:
            while not isinstance(event, Finished):
                await resp.write(_sse(builder.chunk(event)))
                event = await anext(generation)
            await resp.write(_sse(builder.chunk(None, event.finish_reason.openai)))
            if parsed.include_usage:
                await resp.write(_sse(builder.usage_chunk(event.usage)))
        except FlashStreamError as exc:
            # Headers are gone already: the error travels as the last event.
            _, err, _ = error_response(exc)
            await resp.write(_sse(err))
        await resp.write(_sse(b"[DONE]"))
        await resp.write_eof()
        return resp
