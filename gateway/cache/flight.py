"""Coalescing: one generation per key at a time, read by every identical request that arrives meanwhile.

A `Flight` owns the key's single source of events: a stored answer, or one upstream request. Its pump
appends every event to `events`; each reader walks that list from the start, so a request that joins late
still gets the whole stream. The upstream request is aborted only when its last reader leaves early.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from gateway.cache.entry import CachedResult
from gateway.schema import Event, Finished, TextDelta
from services.common.errors import ErrorCode, FlashStreamError
from services.common.finish_reason import FinishReason

log = logging.getLogger(__name__)

Item = Event | FlashStreamError
# Returns a stored answer, or the upstream request's first step: (next, abort) of a RequestHandle.
Source = Callable[[], Awaitable[CachedResult | None]]


@runtime_checkable
class Listenable(Protocol):
    """An upstream request that can hand its events over as they arrive (the tokenizer client's)."""

    def listen(self, listener: Callable[[Item], None]) -> None: ...


class Flight:
    """One key's answer in the making (or replayed from the store) and the requests reading it."""

    def __init__(self, key: str, lookup: Source, forward: Callable[[], object],
                 on_end: Callable[[Flight], None]) -> None:
        self.key = key
        self.events: list[Item] = []
        self.from_store = False
        self.ended = False  # the terminal event is in `events`
        self.abandoned = False  # every reader left before the end; the upstream request was aborted
        self.num_readers = 0
        self._lookup = lookup
        self._forward = forward  # -> RequestHandle; may raise FlashStreamError
        self._on_end = on_end
        self._handle: object | None = None
        # The readers waiting for the next event, one future each (a shared one would be cancelled with the first
        # reader that leaves); every append wakes them, without a new asyncio.Event per event.
        self._waiters: list[asyncio.Future[None]] = []
        self._task = asyncio.create_task(self._pump())

    @property
    def is_complete(self) -> bool:
        """Ended normally: worth storing."""
        last = self.events[-1] if self.ended else None
        return isinstance(last, Finished) and last.finish_reason is not FinishReason.ABORT

    def reader(self, leader: bool) -> FlightReader:
        self.num_readers += 1
        return FlightReader(self, leader)

    async def wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _append(self, item: Item) -> None:
        self.events.append(item)
        if not isinstance(item, TextDelta):
            # The terminal event, marked at once: a reader that takes it before the pump runs again leaves a
            # finished flight, not an abandoned one.
            self.ended = True
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():  # a reader cancelled while it waited leaves its future cancelled
                    waiter.set_result(None)

    async def _pump(self) -> None:
        try:
            cached = await self._lookup()
            if cached is not None:
                self.from_store = True
                for chunk in cached.chunks:
                    self._append(chunk)
                self._append(cached.finished)
            else:
                try:
                    self._handle = handle = self._forward()
                except FlashStreamError as exc:
                    self._append(exc)
                else:
                    await self._follow(handle)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must still end every reader's request
            log.exception("result cache flight %s failed", self.key)
            self._append(FlashStreamError(f"result cache failure: {exc}", ErrorCode.INTERNAL))
        self._on_end(self)  # every path here appended a terminal event, which marked the flight ended

    async def _follow(self, handle: object) -> None:
        """Appends the upstream request's events up to its terminal one: handed over as they arrive where the handle
        can (no task woken per event, only the readers), else read one by one."""
        if not isinstance(handle, Listenable):
            while True:
                item = await handle.next()  # type: ignore[attr-defined]
                self._append(item)
                if not isinstance(item, TextDelta):
                    return
        ended = asyncio.get_running_loop().create_future()

        def on_event(item: Item) -> None:
            if ended.done():  # abandoned (the wait below was cancelled): nobody reads on
                return
            self._append(item)
            if not isinstance(item, TextDelta):
                ended.set_result(None)

        handle.listen(on_event)
        await ended

    def detach(self) -> None:
        """A reader left; the last one to leave before the end aborts the upstream request."""
        self.num_readers -= 1
        if self.num_readers == 0 and not self.ended:
            self.abandoned = True
            self._task.cancel()
            if self._handle is not None:
                self._handle.abort()  # type: ignore[attr-defined]
            self._on_end(self)

    def cancel(self) -> None:
        self._task.cancel()


class FlightReader:
    """A RequestHandle over a flight. Followers, and everyone reading a stored answer, see
    usage.result_cached = true: no generation ran for them."""

    __slots__ = ("_flight", "_leader", "_pos", "_left")

    def __init__(self, flight: Flight, leader: bool) -> None:
        self._flight = flight
        self._leader = leader
        self._pos = 0
        self._left = False

    def _take(self) -> Item:
        item = self._flight.events[self._pos]
        self._pos += 1
        if not isinstance(item, TextDelta):
            self._leave()
            if isinstance(item, Finished) and (self._flight.from_store or not self._leader):
                item = dataclasses.replace(item, usage=dataclasses.replace(item.usage, result_cached=True))
        return item

    @property
    def replayed(self) -> bool:
        return self._flight.from_store or not self._leader

    async def next(self) -> Item:
        while self._pos >= len(self._flight.events):
            await self._flight.wait()
        return self._take()

    def next_nowait(self) -> Item | None:
        # A stored answer is all there at once, so its reader merges it into one chunk: one message (one SSE
        # event, one write) per hit instead of one per stored chunk, which was most of a hit's gateway CPU.
        if self._pos >= len(self._flight.events):
            return None
        return self._take()

    def abort(self) -> None:
        self._leave()

    def _leave(self) -> None:
        if not self._left:
            self._left = True
            self._flight.detach()
