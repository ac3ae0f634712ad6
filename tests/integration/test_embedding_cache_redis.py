"""The embedding cache on a real Redis server: one entry per vector with its TTL, shared by two gateways, local
copies in each gateway, and misses (never errors) while Redis is down."""

from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest
import redis.asyncio as aioredis

from gateway.cache.breaker import CircuitBreaker
from gateway.cache.embedding_cache import EmbeddingCache, VectorOptions
from gateway.cache.redis_packing import HiredisPacking
from gateway.cache.redis_store import RedisStore
from gateway.cache.tiered_store import TieredStore
from gateway.config import EmbeddingCacheConfig, ResultCacheConfig
from gateway.schema import ModelCard
from gateway.server import build_embedding_store
from tests.integration.embedding_stack import embedding_stack
from tests.integration.test_gateway_cache_redis import REDIS, RedisServer, redis_server
from tests.minilm import minilm_folder

pytestmark = [pytest.mark.slow, pytest.mark.skipif(REDIS is None, reason="redis-server is not installed"),
              pytest.mark.timeout(120)]
MODEL = "all-MiniLM-L6-v2"
CARD = ModelCard("m", revision="r")
DEFAULT = VectorOptions(None, 0)


def _client(http: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=http + "/v1", api_key="unused", max_retries=0, timeout=30)


def _cached(reply) -> list[bool]:  # noqa: ANN001
    return [d.model_extra["cached"] for d in reply.data]


def test_vectors_live_in_redis_with_their_ttl_and_serve_a_second_gateway() -> None:
    async def main(url: str) -> None:
        cache = EmbeddingCacheConfig(ttl_s=40.0)
        async with embedding_stack([(minilm_folder(), MODEL)], redis_url=url, embedding_cache=cache) as stack:
            client = _client(stack.http)
            first = await client.embeddings.create(model=MODEL, input=["alpha", "beta", "alpha"])
            assert _cached(first) == [False, False, False]  # "alpha" twice in one request: computed once
            assert first.data[0].embedding == first.data[2].embedding
            await client.close()
        redis = aioredis.Redis.from_url(url)
        try:
            keys = await redis.keys("flashstream:embedding:v1:*")
            assert len(keys) == 2
            assert 39_000 < await redis.pttl(keys[0]) <= 40_000
            assert len(await redis.get(keys[0])) == 384 * 4
        finally:
            await redis.aclose()
        async with embedding_stack([(minilm_folder(), MODEL)], redis_url=url, embedding_cache=cache) as stack:
            client = _client(stack.http)
            second = await client.embeddings.create(model=MODEL, input=["beta", "gamma", "alpha"])
            assert _cached(second) == [True, False, True]
            assert second.data[2].embedding == first.data[0].embedding
            await client.close()

    with redis_server() as redis:
        asyncio.run(main(f"redis://127.0.0.1:{redis.port}/0"))


def test_a_batch_of_256_vectors_round_trips_in_two_mgets_at_once_on_the_stores_own_connections() -> None:
    async def main(url: str) -> None:
        store = RedisStore(url, 30.0, 0.5, CircuitBreaker(3, 1.0))
        cache = EmbeddingCache(store)
        keys = cache.keys(CARD, "t", DEFAULT, [[i, 7] for i in range(256)])
        vectors = [np.arange(1024, dtype=np.float32) + i for i in range(0, 256, 2)]
        await cache.save(keys[::2], vectors)
        raw = aioredis.Redis.from_url(url)
        try:
            assert 29_000 < await raw.pttl(keys[0]) <= 30_000
            await raw.config_resetstat()
            assert sum(v is not None for v in await cache.lookup(keys[:128])) == 64
            stats = await raw.info("commandstats")
            assert (stats["cmdstat_mget"]["calls"], "cmdstat_get" in stats) == (1, False)
            found = await cache.lookup(keys)
            stats = await raw.info("commandstats")
            assert (stats["cmdstat_mget"]["calls"], "cmdstat_get" in stats) == (3, False)
            await raw.set(keys[254], b"abc")  # not a vector: a miss, the others still decode
            again = await cache.lookup(keys)
        finally:
            await raw.aclose()
        writes = store._client.connection_pool._available_connections  # SETs go through redis-py, packed by hiredis
        assert ([isinstance(c, HiredisPacking) for c in writes], len(store._idle)) == ([True], 2)
        assert [i for i, v in enumerate(found) if v is not None] == list(range(0, 256, 2))
        assert all(np.array_equal(found[i], vectors[i // 2]) for i in range(0, 256, 2))
        assert [i for i, v in enumerate(again) if v is not None] == list(range(0, 254, 2))
        assert all(np.array_equal(again[i], vectors[i // 2]) for i in range(0, 254, 2))
        assert store.num_failures == 0 and not store.breaker.is_open
        await store.close()

    with redis_server() as redis:
        asyncio.run(main(f"redis://127.0.0.1:{redis.port}/0"))


def test_one_failed_mget_of_a_batch_is_a_miss_for_every_key_and_one_failure_for_the_breaker() -> None:
    async def main(url: str) -> None:
        store = RedisStore(url, 30.0, 0.5, CircuitBreaker(3, 1.0))
        cache = EmbeddingCache(store)
        keys = cache.keys(CARD, "t", DEFAULT, [[i, 7] for i in range(256)])
        await cache.save(keys, _vectors(256))  # leaves one connection in the pool
        raw = aioredis.Redis.from_url(url)
        try:
            await raw.config_set("maxclients", 2)  # this client and the pooled one: the second MGET's is refused
            assert await cache.lookup(keys) == [None] * 256
            assert (store.num_failures, store.breaker.is_open) == (1, False)
            await raw.config_set("maxclients", 100)
            assert sum(v is not None for v in await cache.lookup(keys)) == 256
        finally:
            await raw.aclose()
        await store.close()

    with redis_server() as redis:
        asyncio.run(main(f"redis://127.0.0.1:{redis.port}/0"))


def test_redis_down_means_misses_and_answers_not_errors_while_local_copies_still_answer() -> None:
    async def main() -> None:
        with redis_server() as redis:
            url = f"redis://127.0.0.1:{redis.port}/0"
            async with embedding_stack([(minilm_folder(), MODEL)], redis_url=url) as stack:
                client = _client(stack.http)
                assert _cached(await client.embeddings.create(model=MODEL, input="delta")) == [False]
                assert _cached(await client.embeddings.create(model=MODEL, input="delta")) == [True]
                redis.stop()
                for i in range(3):  # a new input misses, "delta" still has its local copy
                    reply = await client.embeddings.create(model=MODEL, input=["delta", f"epsilon {i}"])
                    assert _cached(reply) == [True, False] and len(reply.data[1].embedding) == 384
                store = stack.gateway.embeddings.cache.store
                assert isinstance(store, TieredStore) and store.shared.breaker.is_open
                await client.close()

    asyncio.run(main())


def _gateway_cache(url: str, local_ttl_s: float = 60.0) -> EmbeddingCache:
    """The embedding cache a gateway with --redis-url builds."""
    redis = ResultCacheConfig(redis_url=url, redis_timeout_s=0.2, breaker_failures=2, breaker_cooldown_s=30.0)
    return EmbeddingCache(build_embedding_store(EmbeddingCacheConfig(local_ttl_s=local_ttl_s), redis))


def _vectors(n: int) -> list[np.ndarray]:
    return [np.arange(1024, dtype=np.float32) + i for i in range(n)]


def test_a_second_lookup_of_vectors_another_gateway_stored_is_answered_by_local_copies_without_redis() -> None:
    async def main(redis: RedisServer) -> None:
        writer, reader = _gateway_cache(redis.url), _gateway_cache(redis.url)
        keys = writer.keys(CARD, "t", DEFAULT, [[i, 7] for i in range(256)])
        await writer.save(keys, _vectors(256))
        first = await reader.lookup(keys)  # from Redis, now copied locally
        assert reader.store.num_local_hits == 0
        redis.stop()
        second = await reader.lookup(keys)
        assert (reader.store.num_local_hits, reader.store.shared.num_failures) == (256, 0)  # Redis never called
        assert all(np.array_equal(v, w) and np.array_equal(v, u) for v, w, u in zip(first, second, _vectors(256)))
        await writer.close()
        await reader.close()

    with redis_server() as redis:
        asyncio.run(main(redis))


def test_a_local_ttl_of_0_reads_redis_alone() -> None:
    async def main(url: str) -> None:
        cache = _gateway_cache(url, local_ttl_s=0.0)
        assert isinstance(cache.store, RedisStore)
        keys = cache.keys(CARD, "t", DEFAULT, [[1, 2], [3, 4]])
        await cache.save(keys, _vectors(2))
        assert [v is not None for v in await cache.lookup(keys)] == [True, True]
        raw = aioredis.Redis.from_url(url)
        await raw.flushdb()
        await raw.aclose()
        assert await cache.lookup(keys) == [None, None]
        await cache.close()

    with redis_server() as redis:
        asyncio.run(main(redis.url))


def test_two_tenants_never_share_a_local_copy() -> None:
    async def main(url: str) -> None:
        cache = _gateway_cache(url)
        inputs = [[1, 2], [3, 4]]
        keys_a, keys_b = cache.keys(CARD, "a", DEFAULT, inputs), cache.keys(CARD, "b", DEFAULT, inputs)
        await cache.save(keys_a, _vectors(2))
        assert await cache.lookup(keys_b) == [None, None]
        assert ([key in cache.store.local for key in keys_a + keys_b], cache.store.num_local_hits) == (
            [True, True, False, False], 0)
        await cache.close()

    with redis_server() as redis:
        asyncio.run(main(redis.url))


def test_while_redis_is_down_what_no_local_copy_holds_misses_and_the_breaker_opens() -> None:
    async def main(redis: RedisServer) -> None:
        cache = _gateway_cache(redis.url)
        held, lost = cache.keys(CARD, "t", DEFAULT, [[1, 2]]), cache.keys(CARD, "t", DEFAULT, [[3, 4], [5, 6]])
        await cache.save(held, _vectors(1))
        redis.stop()
        for _ in range(3):
            found = await cache.lookup(held + lost)
            assert [v is not None for v in found] == [True, False, False]
        assert (cache.store.shared.num_failures, cache.store.shared.breaker.is_open) == (2, True)
        await cache.save(lost, _vectors(2))  # dropped by Redis, kept locally
        assert [v is not None for v in await cache.lookup(lost)] == [True, True]
        await cache.close()

    with redis_server() as redis:
        asyncio.run(main(redis))
