"""The in-process LRU store, stored entries and the Redis circuit breaker (no Redis needed)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.cache.breaker import CircuitBreaker
from gateway.cache.entry import CachedResult, EntryError
from gateway.cache.lru_store import LruStore
from gateway.cache.redis_store import RedisStore
from gateway.cache.tiered_store import TieredStore
from gateway.config import EmbeddingCacheConfig, ResultCacheConfig
from gateway.schema import Finished, Latency, TextDelta, TokenLogprob, TopLogprob, Usage
from gateway.server import build_embedding_store
from services.common.finish_reason import FinishReason
from tests.manual_clock import ManualClock

pytestmark = pytest.mark.timeout(30)


def test_lru_evicts_the_least_recently_used_past_max_entries() -> None:
    store = LruStore(max_entries=2, max_bytes=1000, ttl_s=60)
    store.put_nowait("a", b"1")
    store.put_nowait("b", b"2")
    assert store.get_nowait("a") == b"1"  # a is now the most recent
    store.put_nowait("c", b"3")
    assert ("a" in store, "b" in store, "c" in store) == (True, False, True)
    assert store.num_bytes == 2


def test_lru_evicts_oldest_until_the_bytes_fit_and_skips_values_larger_than_the_bound() -> None:
    store = LruStore(max_entries=100, max_bytes=10, ttl_s=60)
    store.put_nowait("a", b"aaaa")
    store.put_nowait("b", b"bbbb")
    store.put_nowait("c", b"cccc")  # 12 bytes > 10: a goes
    assert (len(store), store.num_bytes, "a" in store) == (2, 8, False)
    store.put_nowait("huge", b"x" * 11)
    assert (len(store), store.num_bytes, "huge" in store) == (2, 8, False)
    store.put_nowait("b", b"B")  # replacing a value recounts its bytes
    assert store.num_bytes == 5



def test_lru_rows_are_decoded_once_per_entry_as_views_of_its_bytes_and_follow_recency_ttl_and_replacement() -> None:
    clock = ManualClock()
    f32 = np.dtype("<f4")
    store = LruStore(max_entries=3, max_bytes=1000, ttl_s=5, clock=clock)
    a, b = np.array([1.5, -2.0], f32).tobytes(), np.array([0.1], f32).tobytes()
    store.put_nowait("a", a)
    store.put_nowait("b", b)
    store.put_nowait("odd", b"xyz")  # not whole float32 items
    first = store.get_rows_nowait(["a", "missing", "b", "odd"], f32)
    assert [None if row is None else row.tolist() for row in first] == [[1.5, -2.0], None, [np.float32(0.1)], None]
    assert (first[0].base is a, first[0].flags.writeable) == (True, False)
    again = store.get_rows_nowait(["b", "a"], f32)
    assert (again[0] is first[2], again[1] is first[0]) == (True, True)
    store.put_nowait("c", b"")  # a and b were read after odd: odd goes
    assert ("odd" in store, "a" in store, "b" in store) == (False, True, True)
    store.put_nowait("a", np.array([7.0], f32).tobytes())  # a new value, a new row
    assert store.get_rows_nowait(["a"], f32)[0].tolist() == [7.0]
    clock.now = 5.0
    assert store.get_rows_nowait(["a", "b"], f32) == [None, None]
    assert (len(store), store.num_bytes) == (1, 0)


def test_lru_put_many_keeps_the_same_entries_as_one_put_at_a_time() -> None:
    items = [("a", b"aaaa"), ("b", b"bb"), ("huge", b"x" * 11), ("c", b"cccc"), ("a", b"A"), ("d", b"dddd")]
    one_by_one, at_once = (LruStore(max_entries=3, max_bytes=10, ttl_s=60) for _ in range(2))
    for store in (one_by_one, at_once):
        store.put_nowait("old", b"o")
    for key, value in items:
        one_by_one.put_nowait(key, value)
    at_once.put_many_nowait(items)
    for store in (one_by_one, at_once):
        assert ([key for key in ("old", "a", "b", "huge", "c", "d") if key in store], store.num_bytes) == (
            ["a", "c", "d"], 9)
        assert [store.get_nowait(key) for key in ("c", "a", "d")] == [b"cccc", b"A", b"dddd"]

def test_lru_entries_expire_after_the_ttl() -> None:
    clock = ManualClock()
    store = LruStore(max_entries=10, max_bytes=100, ttl_s=5, clock=clock)
    store.put_nowait("a", b"1")
    clock.now = 4.9
    assert asyncio.run(store.get("a")) == b"1"
    clock.now = 5.0
    assert asyncio.run(store.get("a")) is None
    assert (len(store), store.num_bytes) == (0, 0)


def test_cached_result_round_trips_chunks_logprobs_and_finish_without_latency() -> None:
    chunks = (
        TextDelta("", (), (), 7),
        TextDelta("Hé", (1, 2), (TokenLogprob(1, -0.25, "H", (TopLogprob(9, -1.5, "x", b"x"),), b"H"),
                                 TokenLogprob(2, float("-inf"), "\ufffd", (), b"\xc3")), 0),
    )
    done = Finished(FinishReason.STOP_STRING, Usage(7, 2, 3), Latency(1.0, 2.0), stop_string="END")
    back = CachedResult.decode(CachedResult(chunks, done).encode())
    assert back.chunks == chunks
    assert back.finished == Finished(FinishReason.STOP_STRING, Usage(7, 2, 3), Latency(), stop_string="END")


def test_an_unreadable_entry_is_an_entry_error() -> None:
    for raw in (b"not json", b'{"v":99,"chunks":[],"done":[1,0,0,0,""]}', b'{"v":1}', b"\xff"):
        with pytest.raises(EntryError):
            CachedResult.decode(raw)


def test_breaker_opens_after_threshold_failures_and_lets_one_trial_through_after_cooldown() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert not breaker.is_open
    breaker.record_failure()
    assert (breaker.is_open, breaker.allow(), breaker.num_opened) == (True, False, 1)
    clock.now = 10.0
    assert breaker.allow() and not breaker.allow()  # exactly one trial
    breaker.record_failure()  # the trial failed: another cool-down
    assert (breaker.is_open, breaker.allow(), breaker.num_opened) == (True, False, 1)
    clock.now = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert (breaker.is_open, breaker.num_failures, breaker.allow()) == (False, 0, True)


def test_a_success_resets_the_consecutive_failure_count() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown_s=1)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert not breaker.is_open


def test_a_tiered_store_answers_from_its_local_copy_until_the_local_ttl_then_from_the_shared_store() -> None:
    async def main() -> None:
        clock = ManualClock()
        shared = LruStore(max_entries=10, max_bytes=100, ttl_s=60, clock=clock)
        store = TieredStore(LruStore(max_entries=10, max_bytes=100, ttl_s=1, clock=clock), shared)
        shared.put_nowait("a", b"1")  # another process stored it
        assert (await store.get("a"), "a" in store.local, store.num_local_hits) == (b"1", True, 0)
        shared.put_nowait("a", b"2")
        clock.now = 0.9
        assert (await store.get("a"), store.num_local_hits) == (b"1", 1)
        clock.now = 1.0
        assert (await store.get("a"), store.num_local_hits) == (b"2", 1)
        assert await store.get("missing") is None and "missing" not in store.local

    asyncio.run(main())


def test_a_tiered_store_writes_both_tiers_and_reads_many_from_the_shared_store_only_what_it_lacks() -> None:
    async def main() -> None:
        shared = LruStore(max_entries=10, max_bytes=100, ttl_s=60)
        store = TieredStore(LruStore(max_entries=10, max_bytes=100, ttl_s=60), shared)
        await store.put("a", b"1")
        await store.put_many([("b", b"2")])
        assert (shared.get_nowait("a"), shared.get_nowait("b"), len(store.local)) == (b"1", b"2", 2)
        shared.put_nowait("c", b"3")
        await shared.put("a", b"changed")  # the local copy still answers for a
        assert await store.get_many(["a", "c", "d", "b"]) == [b"1", b"3", None, b"2"]
        assert (store.num_local_hits, "c" in store.local, "d" in store.local) == (2, True, False)
        await store.close()
        assert (len(store.local), len(shared)) == (0, 0)

    asyncio.run(main())


def test_a_tiered_store_reads_rows_of_its_local_copies_and_of_the_shared_store_and_keeps_the_shared_ones() -> None:
    async def main() -> None:
        f32 = np.dtype("<f4")
        shared = LruStore(max_entries=10, max_bytes=1000, ttl_s=60)
        store = TieredStore(LruStore(max_entries=10, max_bytes=1000, ttl_s=60), shared)
        await store.put("a", np.array([1.0, 2.0], f32).tobytes())
        shared.put_nowait("b", np.array([3.0, 4.0], f32).tobytes())
        shared.put_nowait("c", b"odd")  # not whole float32 items: a miss, kept as it is
        rows = await store.get_rows(["b", "a", "d", "c"], f32)
        assert [None if row is None else row.tolist() for row in rows] == [[3.0, 4.0], [1.0, 2.0], None, None]
        assert (store.local.get_nowait("b"), "c" in store.local, store.num_local_hits) == (
            np.array([3.0, 4.0], f32).tobytes(), False, 1)
        assert [row.tolist() for row in await store.get_rows(["a", "b"], f32)] == [[1.0, 2.0], [3.0, 4.0]]
        assert store.num_local_hits == 3

    asyncio.run(main())


def test_with_redis_the_embedding_store_keeps_local_copies_within_its_own_bounds_unless_its_local_ttl_is_0() -> None:
    redis = ResultCacheConfig(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.2, local_ttl_s=1.0)
    store = build_embedding_store(EmbeddingCacheConfig(ttl_s=40.0, max_entries=7, max_bytes=9000), redis)
    assert isinstance(store, TieredStore) and isinstance(store.shared, RedisStore)
    assert (store.local.max_entries, store.local.max_bytes, store.local.ttl_s) == (7, 9000, 40.0)
    assert (store.shared.ttl_ms, store.shared.timeout_s) == (40_000, 0.2)
    store = build_embedding_store(EmbeddingCacheConfig(ttl_s=40.0, local_ttl_s=5.0), redis)
    assert isinstance(store, TieredStore) and store.local.ttl_s == 5.0
    store = build_embedding_store(EmbeddingCacheConfig(local_ttl_s=0.0), redis)
    assert isinstance(store, RedisStore)
    store = build_embedding_store(EmbeddingCacheConfig(ttl_s=40.0, local_ttl_s=5.0), ResultCacheConfig())
    assert isinstance(store, LruStore) and store.ttl_s == 40.0
