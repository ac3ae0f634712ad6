"""Coalescing: every reader of a flight gets the leader's events, its error, and the last to leave aborts."""

from __future__ import annotations

import asyncio

from gateway.cache.entry import CachedResult
from gateway.cache.flight import Flight
from gateway.schema import Finished, TextDelta
from gateway.tokenizer_client import TokenizerRequest
from services.common.errors import FlashStreamError, Unavailable
from services.common.finish_reason import FinishReason


class QueueHandle:
    """An upstream request fed by the test."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.num_aborts = 0

    async def next(self) -> object:
        return await self.queue.get()

    def next_nowait(self) -> object:
        return None if self.queue.empty() else self.queue.get_nowait()

    def abort(self) -> None:
        self.num_aborts += 1


def _flight(handle: QueueHandle, ended: list[Flight]) -> Flight:
    async def lookup() -> None:
        return None

    return Flight("k", lookup, lambda: handle, ended.append)


def test_an_upstream_error_reaches_the_leader_and_every_follower() -> None:
    async def main() -> None:
        handle, ended = QueueHandle(), []
        flight = _flight(handle, ended)
        readers = [flight.reader(leader=i == 0) for i in range(3)]
        handle.queue.put_nowait(TextDelta("a", (1,)))
        handle.queue.put_nowait(Unavailable("lost the tokenizer stream"))
        for reader in readers:
            assert await reader.next() == TextDelta("a", (1,))
            err = await reader.next()
            assert isinstance(err, FlashStreamError) and err.message == "lost the tokenizer stream"
        assert ended == [flight] and not flight.is_complete and handle.num_aborts == 0

    asyncio.run(main())


def test_readers_leaving_early_abort_upstream_only_when_the_last_one_leaves() -> None:
    async def main() -> None:
        handle, ended = QueueHandle(), []
        flight = _flight(handle, ended)
        leader, follower = flight.reader(leader=True), flight.reader(leader=False)
        handle.queue.put_nowait(TextDelta("a", (1,)))
        assert await leader.next() == TextDelta("a", (1,))
        assert (leader.replayed, follower.replayed) == (False, True)  # tokens generated for the leader only
        leader.abort()
        assert handle.num_aborts == 0 and ended == []
        handle.queue.put_nowait(Finished(FinishReason.LENGTH))
        assert await follower.next() == TextDelta("a", (1,))
        done = await follower.next()
        assert done.usage.result_cached and done.finish_reason is FinishReason.LENGTH
        assert ended == [flight] and flight.is_complete and handle.num_aborts == 0

        handle2, ended2 = QueueHandle(), []
        flight2 = _flight(handle2, ended2)
        a, b = flight2.reader(leader=True), flight2.reader(leader=False)
        await asyncio.sleep(0)
        a.abort()
        b.abort()
        assert handle2.num_aborts == 1 and flight2.abandoned and ended2 == [flight2]

    asyncio.run(main())


def test_an_answer_from_the_store_is_replayed_for_its_leader_too() -> None:
    async def main() -> None:
        async def stored() -> CachedResult:
            return CachedResult((TextDelta("b", (2,)),), Finished(FinishReason.EOS))

        ended: list[Flight] = []
        replay = Flight("k", stored, QueueHandle, ended.append).reader(leader=True)
        assert await replay.next() == TextDelta("b", (2,))
        assert replay.replayed

    asyncio.run(main())


class Link:
    """The connection of a tokenizer client's request, as far as a request uses it: aborts."""

    def __init__(self) -> None:
        self.aborted: list[str] = []

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


def test_a_listening_flight_takes_the_client_requests_events_as_the_link_puts_them() -> None:
    async def main() -> None:
        link, ended = Link(), []
        upstream = TokenizerRequest("r1", link)  # type: ignore[arg-type]
        upstream.put(TextDelta("a", (1,)))  # received before the flight listens: handed over first
        flight = _flight(upstream, ended)  # type: ignore[arg-type]
        leader, follower = flight.reader(leader=True), flight.reader(leader=False)
        await asyncio.sleep(0)  # the flight's task looks the key up and starts listening
        upstream.put(TextDelta("b", (2,)))
        assert flight.events == [TextDelta("a", (1,)), TextDelta("b", (2,))]  # no task ran in between
        upstream.put(Finished(FinishReason.LENGTH))
        for reader in (leader, follower):
            assert [await reader.next() for _ in range(2)] == [TextDelta("a", (1,)), TextDelta("b", (2,))]
            assert (await reader.next()).finish_reason is FinishReason.LENGTH
        await asyncio.sleep(0)
        assert ended == [flight] and flight.is_complete and link.aborted == []

    asyncio.run(main())


def test_an_abandoned_listening_flight_aborts_upstream_once_and_keeps_no_later_event() -> None:
    async def main() -> None:
        link, ended = Link(), []
        upstream = TokenizerRequest("r2", link)  # type: ignore[arg-type]
        flight = _flight(upstream, ended)  # type: ignore[arg-type]
        reader = flight.reader(leader=True)
        await asyncio.sleep(0)
        upstream.put(TextDelta("a", (1,)))
        assert await reader.next() == TextDelta("a", (1,))
        reader.abort()
        await asyncio.sleep(0)
        upstream.put(TextDelta("late", (9,)))  # already on its way when the abort went up
        assert link.aborted == ["r2"] and flight.abandoned and ended == [flight]
        assert flight.events == [TextDelta("a", (1,))]

    asyncio.run(main())
