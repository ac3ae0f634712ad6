"""OpenAI-compatible HTTP: /v1/completions, /v1/chat/completions (streamed as SSE or whole), /v1/embeddings,
/v1/models, /v1/models/{id}, plus /health, /ready and /metrics. JSON in, core call, JSON out.

A request with several choices (`n`, or an array of prompts) runs one generation per choice; their events are
merged as they come, each chunk naming its choice's index, as OpenAI streams them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway import json_text
from gateway.auth import ApiKeys
from gateway.cache.key import tenant_from_authorization
from gateway.core import GatewayCore, Generation
from gateway.embeddings import EmbeddingService
from gateway.errors import PayloadTooLarge, RequestError
from gateway.openai_embeddings import embeddings_response, parse_embeddings_request
from gateway.openai_request import OpenAIRequest, parse_openai_request
from gateway.openai_response import ResponseBuilder, combined_usage, json_bytes, openai_finish_reason
from gateway.playground import is_static_path
from gateway.schema import Finished, GenerationRequest, ModelCard, TextDelta, Usage
from services.common.errors import FlashStreamError, NotFound
from services.common.metrics import add_status_routes
from services.common.openai_errors import error_response
from services.common.tracing import TRACEPARENT

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready"})  # and /metrics with open_metrics
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json_bytes(obj)) + b"\n\n"


class HttpApi:
    """The aiohttp application of the gateway."""

    def __init__(self, core: GatewayCore, api_keys: ApiKeys, max_body_bytes: int,
                 embeddings: EmbeddingService | None = None, cors_origins: tuple[str, ...] = (),
                 open_metrics: bool = False) -> None:
        self._core = core
        self._embeddings = embeddings
        self._keys = api_keys
        self._max_body_bytes = max_body_bytes
        self._cors_origins = frozenset(cors_origins)  # browser origins allowed to call the API; "*": any
        self._open_paths = OPEN_PATHS | ({"/metrics"} if open_metrics else set())
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._middleware])
        self.app.router.add_post("/v1/completions", self._completions)
        self.app.router.add_post("/v1/chat/completions", self._chat_completions)
        self.app.router.add_get("/v1/models", self._models)
        if embeddings is not None:
            self.app.router.add_post("/v1/embeddings", self._embed)
        self.app.router.add_get("/v1/models/{model_id:.+}", self._model)
        self.app.on_response_prepare.append(self._add_no_store)
        if self._cors_origins:
            self.app.on_response_prepare.append(self._add_cors_headers)
        add_status_routes(self.app, core.metrics, core.is_ready)

    def _allowed_origin(self, request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if "*" in self._cors_origins:
            return "*"
        return origin if origin in self._cors_origins else None

    @staticmethod
    async def _add_no_store(_: web.Request, response: web.StreamResponse) -> None:
        # Answers are per caller (and may carry an API key's results): no cache along the way may keep them.
        response.headers["Cache-Control"] = "no-store"

    async def _add_cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = self._allowed_origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            if origin != "*":
                response.headers["Vary"] = "Origin"

    def _preflight(self, request: web.Request) -> web.Response:
        """The answer to a browser's CORS preflight: allowed origins get the methods and headers they ask for."""
        if self._allowed_origin(request) is None:
            return web.Response(status=403, text="origin not allowed")
        headers = {
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers",
                                                                "Authorization, Content-Type"),
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers=headers)

    def _error(self, exc: FlashStreamError) -> web.Response:
        self._core.record_error(exc)
        status, body, headers = error_response(exc)
        return web.Response(status=status, body=json_bytes(body), content_type="application/json", headers=headers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and self._cors_origins and "Access-Control-Request-Method" in request.headers:
            return self._preflight(request)
        try:
            if request.path not in self._open_paths and not is_static_path(request.path):
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

    @staticmethod
    def _card_json(card: ModelCard) -> dict[str, Any]:
        return {"id": card.id, "object": "model", "created": 0, "owned_by": card.owned_by,
                "max_model_len": card.max_model_len, "revision": card.revision}

    async def _models(self, _: web.Request) -> web.Response:
        data = [self._card_json(c) for c in self._core.list_models()]
        return web.json_response({"object": "list", "data": data})

    async def _model(self, http: web.Request) -> web.Response:
        return web.json_response(self._card_json(self._core.resolve_model(http.match_info["model_id"])))

    async def _embed(self, http: web.Request) -> web.Response:
        request, encoding = parse_embeddings_request(await self._json(http))
        tenant = tenant_from_authorization(http.headers.get("Authorization"), self._keys.enabled)
        result = await self._embeddings.embed(request, tenant)
        return web.Response(body=json_bytes(embeddings_response(result, encoding)), content_type="application/json")

    @staticmethod
    async def _json(http: web.Request) -> Any:
        return json_text.loads(await http.read())

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, http: web.Request, chat: bool) -> web.StreamResponse:
        parsed = parse_openai_request(await self._json(http), chat)
        tenant = tenant_from_authorization(http.headers.get("Authorization"), self._keys.enabled)
        requests = parsed.choice_requests()
        started: list[Generation] = []

        def start(request: GenerationRequest) -> Generation:
            started.append(self._core.start(request, tenant=tenant,
                                            traceparent=http.headers.get(TRACEPARENT, "")))
            return started[-1]

        try:
            # Each prompt's first choice runs alone until its first event: its prompt's full KV blocks are then in
            # the prefix cache, and the prompt's other choices reuse them instead of computing them again.
            # The first events decide the status: an early error (e.g. a prompt too long) still gets its own code.
            leaders = range(0, len(requests), parsed.n)
            leading = [start(requests[i]) for i in leaders]
            lead_events = await _gather_or_cancel([anext(g) for g in leading])
            followers = [start(r) for i, r in enumerate(requests) if i % parsed.n]
            generations = _interleave(leading, followers, parsed.n)
            follower_events = iter(await _gather_or_cancel([anext(g) for g in followers]))
            lead_iter = iter(lead_events)
            firsts = [next(lead_iter) if i % parsed.n == 0 else next(follower_events) for i in range(len(requests))]
            lead = generations[0]
            builders = [ResponseBuilder(lead.request_id, lead.model, lead.created, chat, parsed.logprobs, index=i,
                                        tool_calls=parsed.parses_tool_calls) for i in range(len(generations))]
            if parsed.stream:
                return await self._stream(http, parsed, builders, generations, firsts)
            results = await _gather_or_cancel([_collect(g, f) for g, f in zip(generations, firsts)])
            choices = [b.choice(deltas, done) for b, (deltas, done) in zip(builders, results)]
            usage = combined_usage([done.usage for _, done in results], parsed.n)
            return web.Response(body=json_bytes(builders[0].full(choices, usage)), content_type="application/json")
        finally:
            for generation in started:
                generation.close()  # a disconnected client cancels the handler; this aborts upstream

    async def _stream(
        self,
        http: web.Request,
        parsed: OpenAIRequest,
        builders: list[ResponseBuilder],
        generations: list[Generation],
        firsts: list[TextDelta | Finished],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(http)
        usages: list[Usage | None] = [None] * len(generations)
        # The last choice's finish, the usage, [DONE] and the end of the body leave in one write: one send instead
        # of four, which counts for short answers (a result-cache hit is a single text chunk before them).
        tail: list[bytes] = []
        try:
            async for index, event in _merged(generations, firsts):
                if isinstance(event, Finished):
                    usages[index] = event.usage
                    last = builders[index].chunk(None, openai_finish_reason(event.finish_reason))
                    if parsed.include_latency:
                        last["latency"] = dataclasses.asdict(event.latency)
                    tail.append(_sse(last))
                    if None in usages:  # other choices still stream: this one's finish goes out now
                        await resp.write(b"".join(tail))
                        tail.clear()
                else:
                    tail.append(_sse(builders[index].chunk_bytes(event)))
                    # Held back only while the choice's next event is known to be there already (the end of an
                    # answer replayed from the result cache, say): it then leaves in the same write.
                    if len(generations) > 1 or not generations[index].has_event_ready:
                        await resp.write(b"".join(tail))
                        tail.clear()
            if parsed.include_usage:
                usage = combined_usage(usages, parsed.n)  # type: ignore[arg-type]  # every choice finished
                tail.append(_sse(builders[0].usage_chunk(usage)))
        except FlashStreamError as exc:
            # Headers are gone already: what was used so far, then the error, travel as the last events.
            if parsed.include_usage:
                so_far = [u if u is not None else g.usage_so_far() for u, g in zip(usages, generations)]
                tail.append(_sse(builders[0].usage_chunk(combined_usage(so_far, parsed.n))))
            _, err, _ = error_response(exc)
            tail.append(_sse(err))
        tail.append(_sse(b"[DONE]"))
        await resp.write_eof(b"".join(tail))
        return resp


def _interleave(leaders: list[Generation], followers: list[Generation], n: int) -> list[Generation]:
    """Choice order: each leader followed by its prompt's n - 1 followers."""
    out = []
    for i, leader in enumerate(leaders):
        out += [leader, *followers[i * (n - 1):(i + 1) * (n - 1)]]
    return out


async def _gather_or_cancel(awaitables: list[Any]) -> list[Any]:
    """Every result in order; the first failure cancels the rest and is raised."""
    if len(awaitables) <= 1:  # one choice, the common case: no task in between
        return [await a for a in awaitables]
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _collect(generation: Generation, first: TextDelta | Finished) -> tuple[list[TextDelta], Finished]:
    deltas: list[TextDelta] = []
    event = first
    while not isinstance(event, Finished):
        deltas.append(event)
        event = await anext(generation)
    return deltas, event


async def _merged(generations: list[Generation], firsts: list[TextDelta | Finished]):  # noqa: ANN202
    """(choice index, event) of every generation as they come, each generation's own in order, until all have
    finished; a failure of any is raised."""
    if len(generations) == 1:  # one choice: no tasks in between
        event = firsts[0]
        yield 0, event
        while not isinstance(event, Finished):
            event = await anext(generations[0])
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TextDelta | Finished | FlashStreamError]] = asyncio.Queue()

    async def pump(index: int) -> None:
        event = firsts[index]
        try:
            await queue.put((index, event))
            while not isinstance(event, Finished):
                event = await anext(generations[index])
                await queue.put((index, event))
        except FlashStreamError as exc:
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i)) for i in range(len(generations))]
    try:
        remaining = len(generations)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, FlashStreamError):
                raise item
            remaining -= isinstance(item, Finished)
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
