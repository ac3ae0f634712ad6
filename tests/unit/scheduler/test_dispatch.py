"""The servicer's dispatch: each Connect stream gets its own requests' tokens, in order, and only while they live."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import ErrorCode
from services.scheduler.config import SchedulerConfig
from services.scheduler.request_events import NewTokens, RequestFailed
from services.scheduler.servicer import SchedulerServicer, _Stream
from services.scheduler.worker_pool import WorkerPool

pytestmark = pytest.mark.timeout(10)


def servicer_with(streams: dict[int, set[str]]) -> SchedulerServicer:
    servicer = SchedulerServicer(WorkerPool([], SchedulerConfig()))
    for number, live in streams.items():
        servicer._streams[number] = _Stream(live=set(live))
    return servicer


def outbox(servicer: SchedulerServicer, number: int) -> list[tuple[str, object]]:
    """(kind, content) of each event in a stream's outbox: a NewTokens as its (key, token) pairs."""
    return [("tokens", list(zip(e.keys, e.token_ids))) if isinstance(e, NewTokens) else ("end", e.key)
            for e in servicer._streams[number].outbox]


def test_a_step_of_tokens_is_shared_out_by_stream_and_tokens_of_ended_requests_are_dropped() -> None:
    async def main() -> None:
        servicer = servicer_with({0: {"a", "b"}, 1: {"c"}})
        tokens = NewTokens([(0, "a"), (1, "c"), (0, "gone"), (0, "b"), (7, "x"), (1, "c")], [1, 2, 3, 4, 5, 6],
                           [None] * 6)
        servicer.dispatch([tokens, RequestFailed((0, "a"), ErrorCode.INTERNAL, "lost")])
        assert outbox(servicer, 0) == [("tokens", [((0, "a"), 1), ((0, "b"), 4)]), ("end", (0, "a"))]
        assert outbox(servicer, 1) == [("tokens", [((1, "c"), 2), ((1, "c"), 6)])]
        assert servicer._streams[0].live == {"b"}

    asyncio.run(main())


def test_one_stream_whose_requests_all_live_takes_the_step_s_tokens_as_they_are() -> None:
    async def main() -> None:
        servicer = servicer_with({3: {"a", "b"}})
        tokens = NewTokens([(3, "a"), (3, "b")], [10, 20], [None, None])
        servicer.dispatch([tokens])
        assert servicer._streams[3].outbox == [tokens] and servicer._streams[3].wake.is_set()
        servicer.dispatch([NewTokens([(3, "b"), (3, "ended")], [21, 99], [None, None])])
        assert outbox(servicer, 3)[1:] == [("tokens", [((3, "b"), 21)])]

    asyncio.run(main())
