"""The plans of one Step stream, read ahead of the model thread so that it can see the next plan while the
current step runs on the device (the scheduler keeps up to `--max-steps-in-flight`, three by default, in flight)."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator

from flashstream.v1 import worker_pb2

from services.common.step import StepPlan
from services.worker.pb import plan_from_pb


class PlanInbox:
    """Filled by the event loop (`fill`), emptied in order by it (`get`); `peek_plan` is safe from any thread."""

    def __init__(self) -> None:
        self._items: deque[StepPlan] = deque()
        self._cond = threading.Condition()
        self._arrived = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None

    async def fill(self, request_iterator: AsyncIterator[worker_pb2.StepPlan]) -> None:
        try:
            async for plan_pb in request_iterator:
                self._put(plan_from_pb(plan_pb))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which fails the stream
            self._error = exc
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._arrived.set()

    def close(self) -> None:
        """Ends the stream here: `get` returns the plans already read, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._arrived.set()

    def _put(self, item: StepPlan) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
        self._arrived.set()

    async def get(self) -> StepPlan | None:
        """The next plan in arrival order; None once the stream has ended and every plan was taken."""
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    if self._error is not None:
                        raise self._error
                    return None
                self._arrived.clear()
            await self._arrived.wait()

    def peek_plan(self, timeout: float) -> StepPlan | None:
        """The plan after the one being run, left in place; waits up to timeout seconds for it to arrive."""
        with self._cond:
            if not self._items and not self._closed and timeout > 0:
                self._cond.wait(timeout)
            return self._items[0] if self._items else None
