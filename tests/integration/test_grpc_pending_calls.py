"""A stage's gRPC server keeps the calls its busy event loop has not taken up yet, instead of cancelling them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from services.common.grpc_server import start_server

CALLS = 3000  # all in flight at once: three times gRPC core's default limit of waiting calls
BUSY_S = 0.001  # event-loop time each call takes, so that calls arrive faster than the loop takes them up


async def _busy_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    start = time.perf_counter()
    while time.perf_counter() - start < BUSY_S:
        pass
    yield request


def _register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_stream_rpc_method_handler(_busy_stream)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Busy", {"Echo": handler}),))


@pytest.mark.timeout(120)
def test_a_busy_server_answers_every_one_of_three_thousand_calls_sent_at_once() -> None:
    async def main() -> dict[str, int]:
        stage = await start_server("127.0.0.1:0", [_register], ["test.Busy"])
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{stage.port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(4)]
        outcomes: dict[str, int] = {}

        async def call(i: int) -> None:
            echo = channels[i % len(channels)].unary_stream("/test.Busy/Echo")
            try:
                replies = [reply async for reply in echo(b"%d" % i, timeout=90)]
                outcome = "OK" if replies == [b"%d" % i] else f"wrong reply {replies!r}"
            except grpc.aio.AioRpcError as exc:
                outcome = exc.code().name
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        try:
            await asyncio.gather(*(call(i) for i in range(CALLS)))
        finally:
            for channel in channels:
                await channel.close()
            await stage.server.stop(0)
        return outcomes

    assert asyncio.run(main()) == {"OK": CALLS}
