"""The plans of one Step stream, read ahead of the model thread so that it can see the next plan while the
current step runs on the device (the scheduler keeps up to `--max-steps-in-flight`, three by default, in flight).

The event loop reads and converts each plan as it arrives and hands the model thread one job per plan at once;
jobs run in arrival order, so each takes the oldest plan, and `peek_plan` shows the one behind it."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import AsyncIterator, Callable

from flashstream.v1 import worker_pb2

from services.common.step import StepPlan
from services.worker.pb import plan_from_pb


class PlanInbox:
    """Filled by the event loop (`fill`), emptied in order by the model thread (`take`); `close` from either."""

    def __init__(self) -> None:
        self._items: deque[StepPlan] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.error: BaseException | None = None  # what ended the request stream, when it did not end cleanly

    async def fill(self, request_iterator: AsyncIterator[worker_pb2.StepPlan], on_plan: Callable[[], None]) -> None:
        """Reads every plan of the stream; `on_plan` is called (on the event loop) after each one is put."""
        try:
            async for plan_pb in request_iterator:
                if not self._put(plan_from_pb(plan_pb)):
                    return
                on_plan()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which fails the stream
            self.error = exc

    def close(self) -> None:
        """Ends the stream here: plans not yet taken are dropped, and `take` answers None from now on."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def _put(self, item: StepPlan) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
        return True

    def take(self) -> StepPlan | None:
        """The oldest plan (the job's own: one job per plan, in order); None once the stream is closed."""
        with self._cond:
            return self._items.popleft() if self._items and not self._closed else None

    def peek_plan(self, timeout: float) -> StepPlan | None:
        """The plan after the one being run, left in place; waits up to timeout seconds for it to arrive."""
        with self._cond:
            if not self._items and not self._closed and timeout > 0:
                self._cond.wait(timeout)
            return self._items[0] if self._items and not self._closed else None
