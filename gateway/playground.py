"""The browser playground: static files served at / and /playground/, and the live engine view's event stream.

The page (gateway/playground/, plain HTML, CSS and JavaScript: nothing to build) talks to the public API like
any client: /v1/models for the picker, /v1/chat/completions streamed for the chat, with
`stream_options.include_latency` for the breakdown by stage. GET /engine/state?model=M&interval_s=S is a
server-sent stream of `engine_event`s of M's scheduler; it needs the API key when keys are configured, like the
rest of the API (the page sends it from its key field).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

from aiohttp import web
from flashstream.v1 import common_pb2

from gateway.core import GatewayCore
from gateway.engine_view import engine_event
from gateway.errors import RequestError
from services.common.errors import FlashStreamError, Unavailable
from services.common.openai_errors import error_response

STATIC_DIR = Path(__file__).resolve().parent / "playground"
STATIC_PREFIX = "/playground/"

WatchEngine = Callable[[str, float], AsyncGenerator[common_pb2.EngineState, None]]


def is_static_path(path: str) -> bool:
    """Paths of the page itself, served without an API key (the page holds no data)."""
    return path == "/" or path.startswith(STATIC_PREFIX)


def add_playground_routes(
    app: web.Application,
    core: GatewayCore,
    watch_engine: WatchEngine,
    result_cache_counts: Callable[[], tuple[int, int]] | None,
) -> None:
    """GET / (the page), GET /playground/* (its files), GET /engine/state (the live view's event stream)."""

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def engine_state(http: web.Request) -> web.StreamResponse:
        card = core.resolve_model(http.query.get("model", ""))
        interval_s = _interval(http.query.get("interval_s", "0"))
        states = watch_engine(card.id, interval_s)
        try:
            # The first state comes before the headers, so a bad interval or an unreachable scheduler is a status.
            state = await anext(states, None)
            if state is None:
                raise Unavailable("the scheduler is shutting down")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(http)
            previous = None
            try:
                while not core.draining:
                    counts = result_cache_counts() if result_cache_counts is not None else None
                    await resp.write(_sse(engine_event(state, previous, counts)))
                    previous, state = state, await anext(states)
            except FlashStreamError as exc:
                await resp.write(b"event: error\n" + _sse(error_response(exc)[1]))
            except StopAsyncIteration:
                pass  # the scheduler or tokenizer is draining
            await resp.write_eof()
            return resp
        finally:
            await states.aclose()

    app.router.add_get("/", index)
    app.router.add_static(STATIC_PREFIX, STATIC_DIR)
    app.router.add_get("/engine/state", engine_state)


def _interval(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise RequestError(f"'interval_s' must be a number of seconds, got {raw!r}", "interval_s") from None


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
