"""The plans of one Step stream: read on the event loop as they arrive, taken in order by the model thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from flashstream.v1 import worker_pb2

from services.worker.plan_inbox import PlanInbox


async def _plans(step_ids: list[int], fail_after: bool = False) -> AsyncIterator[worker_pb2.StepPlan]:
    for step_id in step_ids:
        yield worker_pb2.StepPlan(step_id=step_id)
    if fail_after:
        raise ConnectionError("stream reset")


def test_plans_are_taken_in_arrival_order_and_peek_shows_the_one_behind() -> None:
    inbox = PlanInbox()
    arrived: list[int] = []
    asyncio.run(inbox.fill(_plans([1, 2, 3]), lambda: arrived.append(len(arrived) + 1)))
    assert arrived == [1, 2, 3]  # one call per plan, after it is in the inbox
    first = inbox.take()
    assert first is not None and first.step_id == 1
    assert inbox.peek_plan(0).step_id == 2
    assert [inbox.take().step_id, inbox.take().step_id] == [2, 3]
    assert inbox.take() is None and inbox.peek_plan(0) is None
    assert inbox.error is None


def test_closing_drops_the_plans_not_taken_and_stops_reading() -> None:
    inbox = PlanInbox()
    seen: list[int] = []

    def on_plan() -> None:
        seen.append(1)
        if len(seen) == 2:
            inbox.close()

    asyncio.run(inbox.fill(_plans([1, 2, 3, 4]), on_plan))
    assert len(seen) == 2  # the third plan found the inbox closed and ended the read
    assert inbox.closed and inbox.take() is None and inbox.peek_plan(0.01) is None


def test_a_broken_request_stream_is_kept_for_the_consumer_after_the_plans_before_it() -> None:
    inbox = PlanInbox()
    asyncio.run(inbox.fill(_plans([7], fail_after=True), lambda: None))
    assert inbox.take().step_id == 7
    assert isinstance(inbox.error, ConnectionError) and str(inbox.error) == "stream reset"
