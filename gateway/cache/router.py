"""`CachingRouter`: a Router in front of another that answers reproducible requests from the result cache.

forward() of a cacheable request joins the key's flight, or opens one: the flight looks the key up in the
store, replays a stored answer or forwards upstream, and stores the answer once it ended normally. Requests
that are not reproducible, or ask to bypass the cache, go straight to the inner router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from gateway.cache.entry import CachedResult, EntryError
from gateway.cache.flight import Flight
from gateway.cache.key import is_cacheable, result_key
from gateway.cache.lru_store import ResultStore
from gateway.schema import Finished, ModelCard, Submission, TextDelta, merge_deltas
from services.common.metrics import Metrics

if TYPE_CHECKING:
    from gateway.core import RequestHandle, Router

log = logging.getLogger(__name__)


class CachingRouter:
    def __init__(self, inner: Router, store: ResultStore, metrics: Metrics, namespace: str = "flashstream") -> None:
        self.inner = inner
        self.store = store
        self.metrics = metrics
        self.namespace = namespace
        self.num_upstream = 0  # cacheable requests that had to be generated
        self.num_queries = 0  # cacheable requests looked up (the playground's hit rate; metrics keep their own)
        self.num_hits = 0  # of those, answered from the store or by joining an identical request in flight
        self._flights: dict[str, Flight] = {}
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def cards(self) -> list[ModelCard]:
        return self.inner.cards()

    def _card(self, model: str) -> ModelCard | None:
        return next((c for c in self.inner.cards() if c.id == model), None)

    def forward(self, submission: Submission) -> RequestHandle:
        request = submission.request
        card = self._card(request.model)
        if not is_cacheable(request) or card is None:
            return self.inner.forward(submission)
        key = result_key(request, card, submission.tenant, self.namespace)
        metrics = self.metrics.for_model(card.id)
        metrics.result_cache_queries.inc()
        self.num_queries += 1
        flight = self._flights.get(key)
        if flight is not None:
            metrics.result_cache_hits.inc()
            self.num_hits += 1
            return flight.reader(leader=False)

        async def lookup() -> CachedResult | None:
            start = time.perf_counter()
            raw = await self.store.get(key)
            try:
                cached = None if raw is None else CachedResult.decode(raw)
            except EntryError as exc:
                log.warning("result cache entry %s unreadable, generating again: %s", key, exc)
                cached = None
            metrics.cache_lookup.labels("result").observe(time.perf_counter() - start)
            if cached is None:
                self.num_upstream += 1
                return None
            metrics.result_cache_hits.inc()
            self.num_hits += 1
            return cached

        flight = Flight(key, lookup, lambda: self.inner.forward(submission), self._flight_ended)
        self._flights[key] = flight
        return flight.reader(leader=True)

    def _flight_ended(self, flight: Flight) -> None:
        finished = flight.events[-1] if flight.is_complete else None
        if flight.from_store or not isinstance(finished, Finished):
            self._forget(flight)
            return
        # Stored as one chunk: a replay arrives all at once and goes out as one message anyway.
        deltas = [e for e in flight.events if isinstance(e, TextDelta)]
        value = CachedResult((merge_deltas(deltas),) if deltas else (), finished).encode()
        # The flight stays joinable until its answer is stored, so no identical request slips in between.
        task = asyncio.create_task(self._write(flight, value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, flight: Flight, value: bytes) -> None:
        try:
            await self.store.put(flight.key, value)
        finally:
            self._forget(flight)

    def _forget(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def flush(self) -> None:
        """Waits for answers being written to the store."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def close(self) -> None:
        for flight in list(self._flights.values()):
            flight.cancel()
        self._flights.clear()
        await self.flush()
        await self.store.close()
