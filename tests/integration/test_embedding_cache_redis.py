"""The embedding cache on a real Redis server: one entry per vector with its TTL, shared by two gateways, and
misses (never errors) while Redis is down."""

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
from gateway.config import EmbeddingCacheConfig
from gateway.schema import ModelCard
from tests.integration.embedding_stack import embedding_stack
from tests.integration.test_gateway_cache_redis import REDIS, redis_server
from tests.minilm import minilm_folder

pytestmark = [pytest.mark.slow, pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")]
MODEL = "all-MiniLM-L6-v2"


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


def test_a_batch_of_256_vectors_round_trips_in_one_mget_packed_and_parsed_by_hiredis() -> None:
    async def main(url: str) -> None:
        store = RedisStore(url, 30.0, 0.5, CircuitBreaker(3, 1.0))
        cache = EmbeddingCache(store)
        keys = cache.keys(ModelCard("m", revision="r"), "t", VectorOptions(None, 0), [[i, 7] for i in range(256)])
        vectors = [np.arange(1024, dtype=np.float32) + i for i in range(0, 256, 2)]
        await cache.save(keys[::2], vectors)
        raw = aioredis.Redis.from_url(url)
        try:
            assert 29_000 < await raw.pttl(keys[0]) <= 30_000
            await raw.config_resetstat()
            found = await cache.lookup(keys)
            stats = await raw.info("commandstats")
            assert (stats["cmdstat_mget"]["calls"], "cmdstat_get" in stats) == (1, False)
            await raw.set(keys[254], b"abc")  # not a vector: a miss, the others still decode
            again = await cache.lookup(keys)
        finally:
            await raw.aclose()
        connections = store._client.connection_pool._available_connections
        assert [(isinstance(c, HiredisPacking), type(c._parser).__name__) for c in connections] == [
            (True, "_AsyncHiredisParser")]
        assert [i for i, v in enumerate(found) if v is not None] == list(range(0, 256, 2))
        assert all(np.array_equal(found[i], vectors[i // 2]) for i in range(0, 256, 2))
        assert [i for i, v in enumerate(again) if v is not None] == list(range(0, 254, 2))
        assert all(np.array_equal(again[i], vectors[i // 2]) for i in range(0, 254, 2))
        assert store.num_failures == 0 and not store.breaker.is_open
        await store.close()

    with redis_server() as redis:
        asyncio.run(main(f"redis://127.0.0.1:{redis.port}/0"))


def test_redis_down_means_misses_and_answers_not_errors() -> None:
    async def main() -> None:
        with redis_server() as redis:
            url = f"redis://127.0.0.1:{redis.port}/0"
            async with embedding_stack([(minilm_folder(), MODEL)], redis_url=url) as stack:
                client = _client(stack.http)
                assert _cached(await client.embeddings.create(model=MODEL, input="delta")) == [False]
                assert _cached(await client.embeddings.create(model=MODEL, input="delta")) == [True]
                redis.stop()
                for _ in range(3):
                    reply = await client.embeddings.create(model=MODEL, input="delta")
                    assert _cached(reply) == [False] and len(reply.data[0].embedding) == 384
                assert stack.gateway.embeddings.cache.store.breaker.is_open
                await client.close()

    asyncio.run(main())
