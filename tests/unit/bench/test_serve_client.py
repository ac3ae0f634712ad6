"""The load generator against a real HTTP server on loopback: what it records per request, and when it says the
load began."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from bench.serve_client import run_load
from bench.serve_data import RequestSpec

pytestmark = pytest.mark.timeout(60)

CHUNKS = [b'data: {"choices":[{"text":"a"}]}\n\n', b'data: {"choices":[{"text":"b"}]}\n\n',
          b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n', b"data: [DONE]\n\n"]


@pytest.fixture()
def sse_server() -> Iterator[str]:
    """An aiohttp server streaming two text chunks and a usage chunk for every completion, on its own loop."""
    async def completions(request: web.Request) -> web.StreamResponse:
        await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in CHUNKS:
            await resp.write(chunk)
        return resp

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the port the OS chose
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_the_load_says_when_it_begins_before_any_request_is_sent(sse_server: str) -> None:
    specs = [RequestSpec("hello", 3, 2) for _ in range(4)]
    told: list[float] = []
    load = run_load(sse_server, "m", specs, [0.0] * 4, 4, {"temperature": 0.0}, 1, told.append)
    assert told == [load.t0]
    assert all(rec.start >= load.t0 for rec in load.records)
    assert [(rec.error, len(rec.chunk_times), rec.prompt_tokens, rec.completion_tokens) for rec in load.records] == \
        [("", 2, 3, 2)] * 4
