"""StreamLink over real gRPC on loopback: a small Tokenizer servicer answers each request on its Connect stream
with the prompt upper-cased, so the tests see messages both ways, a restarted peer, a lost stream and close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from flashstream.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc

from services.common.config import BackoffConfig
from services.common.errors import FlashStreamError, Unavailable
from services.common.grpc_server import StageServer, start_server
from services.common.stream_link import StreamLink, StreamLost
from tests.integration.fake_tokenizer import wait_until

pytestmark = pytest.mark.timeout(30)

SERVICE_NAME = tokenizer_pb2.DESCRIPTOR.services_by_name["Tokenizer"].full_name
BACKOFF = BackoffConfig(initial_s=0.05, max_s=0.1)


class UpperServicer(tokenizer_pb2_grpc.TokenizerServicer):
    """Answers each TextRequest at once with its prompt upper-cased, except "hang" (never answered); "bye" ends
    the stream with UNAVAILABLE."""

    def __init__(self) -> None:
        self.ups: list[tuple[list[str], list[str]]] = []  # (request ids, abort ids) of each TokenizerUp
        self.num_streams = 0

    async def Info(self, request: tokenizer_pb2.TokenizerInfoRequest,
                   context: grpc.aio.ServicerContext) -> tokenizer_pb2.TokenizerInfo:
        return tokenizer_pb2.TokenizerInfo(model_id="upper", ready=True)

    async def Connect(self, request_iterator: AsyncIterator[tokenizer_pb2.TokenizerUp],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[tokenizer_pb2.TokenizerDown]:
        self.num_streams += 1
        async for up in request_iterator:
            self.ups.append(([r.request_id for r in up.requests], list(up.abort_request_ids)))
            if any(r.prompt == "bye" for r in up.requests):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            events = [tokenizer_pb2.TextEvent(request_id=r.request_id,
                                              chunk=common_pb2.TextChunk(text=r.prompt.upper()))
                      for r in up.requests if r.prompt != "hang"]
            if events:
                yield tokenizer_pb2.TokenizerDown(events=events)


class UpperLink(StreamLink[tokenizer_pb2.TokenizerUp, tokenizer_pb2.TokenizerDown]):
    """A hop whose requests are futures by request id, answered by the first event of their id."""

    def __init__(self, target: str) -> None:
        super().__init__("tokenizer", target, BACKOFF)
        self.waiting: dict[str, asyncio.Future[str]] = {}
        self.num_opens = 0
        self.lost: list[FlashStreamError] = []

    def ask(self, request_id: str, prompt: str) -> asyncio.Future[str]:
        self.send(tokenizer_pb2.TokenizerUp(requests=[tokenizer_pb2.TextRequest(request_id=request_id,
                                                                                prompt=prompt)]))
        self.waiting[request_id] = future = asyncio.get_running_loop().create_future()
        return future

    async def open_stream(self, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
        stub = tokenizer_pb2_grpc.TokenizerStub(channel)
        await stub.Info(tokenizer_pb2.TokenizerInfoRequest(), timeout=5)
        return stub.Connect()

    def on_open(self) -> None:
        self.num_opens += 1

    def on_message(self, message: tokenizer_pb2.TokenizerDown) -> None:
        for event in message.events:
            self.waiting.pop(event.request_id).set_result(event.chunk.text)

    def on_lost(self, error: FlashStreamError) -> None:
        self.lost.append(error)
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            future.set_exception(error)


async def serve(servicer: UpperServicer, port: int = 0) -> StageServer:
    return await start_server(f"127.0.0.1:{port}",
                              [lambda s: tokenizer_pb2_grpc.add_TokenizerServicer_to_server(servicer, s)],
                              [SERVICE_NAME])


@contextlib.asynccontextmanager
async def linked(link_class: type[UpperLink] = UpperLink,
                 ) -> AsyncIterator[tuple[UpperServicer, StageServer, UpperLink]]:
    """A servicer on a free port and a started link to it, open; both closed at the end."""
    servicer = UpperServicer()
    server = await serve(servicer)
    link = link_class(f"127.0.0.1:{server.port}")
    link.start()
    try:
        await asyncio.wait_for(link.connected.wait(), 5)
        yield servicer, server, link
    finally:
        await link.close()
        await server.server.stop(None)


def test_messages_flow_both_ways_in_the_order_they_were_sent() -> None:
    async def main() -> None:
        async with linked() as (servicer, _, link):
            answers = [link.ask("a", "one"), link.ask("b", "two"), link.ask("c", "three")]
            assert await asyncio.wait_for(asyncio.gather(*answers), 5) == ["ONE", "TWO", "THREE"]
            assert servicer.ups == [(["a"], []), (["b"], []), (["c"], [])]
            assert (servicer.num_streams, link.num_opens, link.lost) == (1, 1, [])

    asyncio.run(main())


def test_a_restarted_peer_gets_a_new_stream_and_requests_flow_again() -> None:
    async def main() -> None:
        async with linked() as (servicer, server, link):
            await wait_until(lambda: servicer.num_streams == 1)
            await server.server.stop(None)
            await wait_until(lambda: not link.connected.is_set())
            with pytest.raises(Unavailable) as err:
                link.ask("early", "x")
            assert err.value.message == f"not connected to the tokenizer at {link.address}"
            again = await serve(servicer, server.port)
            try:
                await asyncio.wait_for(link.connected.wait(), 5)
                assert await asyncio.wait_for(link.ask("again", "back"), 5) == "BACK"
                assert (servicer.num_streams, link.num_opens, len(link.lost)) == (2, 2, 1)
            finally:
                await link.close()
                await again.server.stop(None)

    asyncio.run(main())


def test_a_lost_stream_fails_every_request_on_it_with_one_typed_error_then_opens_again() -> None:
    async def main() -> None:
        async with linked() as (servicer, _, link):
            hanging = [link.ask("h1", "hang"), link.ask("h2", "hang")]
            await wait_until(lambda: len(servicer.ups) == 2)
            link.ask("bye", "bye")
            results = await asyncio.wait_for(asyncio.gather(*hanging, return_exceptions=True), 5)
            message = f"lost the tokenizer stream to {link.address} (UNAVAILABLE: going away); retry the request"
            assert [(type(r), r.message, r.code) for r in results] == [(StreamLost, message, Unavailable.code)] * 2
            assert results[0] is results[1] is link.lost[0]
            await wait_until(lambda: link.num_opens == 2 and link.connected.is_set())
            assert await asyncio.wait_for(link.ask("next", "fine"), 5) == "FINE"
            assert (servicer.num_streams, len(link.lost)) == (2, 1)

    asyncio.run(main())


class StallingLink(UpperLink):
    """Its watch gives up on the stream once a request has waited 0.2 s."""

    async def watch(self) -> None:
        while not self.waiting:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        raise Unavailable("the peer answered nothing for 0.2 s")


def test_an_error_raised_by_the_watch_is_the_error_the_requests_end_with() -> None:
    async def main() -> None:
        async with linked(StallingLink) as (_, _, link):
            with pytest.raises(Unavailable) as err:
                await asyncio.wait_for(link.ask("h", "hang"), 5)
            assert (type(err.value), err.value.message) == (Unavailable, "the peer answered nothing for 0.2 s")
            await wait_until(lambda: link.num_opens == 2)

    asyncio.run(main())


def test_close_ends_the_requests_on_the_stream_and_stays_closed() -> None:
    async def main() -> None:
        async with linked() as (servicer, _, link):
            hanging = link.ask("h", "hang")
            await wait_until(lambda: len(servicer.ups) == 1)
            await asyncio.wait_for(link.close(), 1.0)
            with pytest.raises(StreamLost) as err:
                await hanging
            assert err.value.message == f"lost the tokenizer stream to {link.address} (closed); retry the request"
            assert (link.connected.is_set(), link.channel, len(link.lost)) == (False, None, 1)
            await asyncio.sleep(3 * BACKOFF.max_s)  # long enough for a reconnect, were there one
            assert (servicer.num_streams, link.num_opens) == (1, 1)
            with pytest.raises(Unavailable):
                link.ask("after", "x")

    asyncio.run(main())


def test_close_returns_at_once_while_the_peer_is_unreachable() -> None:
    async def main() -> None:
        link = UpperLink("127.0.0.1:1")
        link.start()
        await asyncio.sleep(0.3)  # a few failed attempts
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(link.close(), 1.0)
        assert loop.time() - start < 0.5
        assert (link.num_opens, link.lost, link.connected.is_set()) == (0, [], False)

    asyncio.run(main())


class ChannelOnlyLink(UpperLink):
    """A peer without a stream: the link holds its channel until it fails."""

    async def open_stream(self, channel: grpc.aio.Channel) -> None:
        await tokenizer_pb2_grpc.TokenizerStub(channel).Info(tokenizer_pb2.TokenizerInfoRequest(), timeout=5)


def test_a_peer_without_a_stream_is_connected_until_its_channel_fails() -> None:
    async def main() -> None:
        async with linked(ChannelOnlyLink) as (servicer, server, link):
            await asyncio.sleep(0.2)
            assert (link.connected.is_set(), servicer.num_streams, link.lost) == (True, 0, [])
            await server.server.stop(None)
            await wait_until(lambda: link.lost)
            assert [e.message for e in link.lost] == [
                f"lost the tokenizer stream to {link.address} (channel transient_failure); retry the request"]
            assert not link.connected.is_set()

    asyncio.run(main())
