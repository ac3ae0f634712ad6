"""The embedding cache on a real Redis server: one entry per vector with its TTL, shared by two gateways, and
misses (never errors) while Redis is down."""

from __future__ import annotations

import asyncio

import openai
import pytest
import redis.asyncio as aioredis

from gateway.config import EmbeddingCacheConfig
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
