"""The result cache on a real Redis server: entries with a TTL, and a gateway that keeps serving when Redis dies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from bench.redis_server import REDIS, RedisServer, redis_server  # noqa: F401 - imported from here too
from gateway.config import GatewayConfig, ResultCacheConfig
from gateway.server import GatewayServer
from gateway.tokenizer_client import ConnectionConfig
from services.common.config import ServerConfig
from services.common.grpc_server import create_channel
from tests.integration.fake_tokenizer import FAKE_CHUNKS, Stack, start_fake_tokenizer, wait_until

pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")


@contextlib.asynccontextmanager
async def redis_stack(url: str, ttl_s: float = 60.0, local_ttl_s: float = 0.0) -> AsyncIterator[Stack]:
    server, fake, port = await start_fake_tokenizer()
    config = GatewayConfig(
        tokenizers=(f"127.0.0.1:{port}",),
        server=ServerConfig(host="127.0.0.1", port=0, drain_timeout_s=2.0),
        http_port=0,
        result_cache=ResultCacheConfig(redis_url=url, ttl_s=ttl_s, redis_timeout_s=0.2, breaker_failures=2,
                                       breaker_cooldown_s=0.3, local_ttl_s=local_ttl_s),
    )
    gateway = GatewayServer(config, ConnectionConfig(info_interval_s=0.2, reconnect_min_s=0.05, reconnect_max_s=0.2))
    await gateway.start()
    stack = Stack(gateway, [fake], [server])
    try:
        await wait_until(gateway.core.is_ready)
        yield stack
    finally:
        await gateway.stop(0.5)
        await server.stop(None)


async def _generate(stack: Stack, prompt: str = "Hi") -> list[gateway_pb2.GenerateChunk]:
    request = gateway_pb2.GenerateRequest(prompt=prompt, options=gateway_pb2.GenerateOptions(
        sampling=common_pb2.SamplingParams(max_tokens=5)))
    async with create_channel(stack.grpc_target) as channel:
        chunks = [c async for c in gateway_pb2_grpc.GatewayStub(channel).Generate(request)]
    assert stack.gateway.cache is not None
    await stack.gateway.cache.flush()
    assert "".join(c.chunk.text for c in chunks[:-1]) == "".join(FAKE_CHUNKS)
    assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_EOS
    return chunks


def test_an_answer_is_stored_in_redis_with_its_ttl_and_replayed_from_there() -> None:
    async def main(url: str) -> None:
        async with redis_stack(url, ttl_s=30.0) as stack:
            first = await _generate(stack)
            second = await _generate(stack)
            assert len(stack.fake.requests) == 1
            assert (first[-1].done.usage.result_cached, second[-1].done.usage.result_cached) == (False, True)
        client = aioredis.Redis.from_url(url)
        try:
            keys = await client.keys("flashstream:result:v1:*")
            assert len(keys) == 1
            assert 29_000 < await client.pttl(keys[0]) <= 30_000
        finally:
            await client.aclose()

    with redis_server() as redis:
        asyncio.run(main(f"redis://127.0.0.1:{redis.port}/0"))


def test_requests_succeed_while_redis_is_down_the_breaker_opens_and_hits_return_with_redis() -> None:
    async def main(redis: RedisServer) -> None:
        async with redis_stack(f"redis://127.0.0.1:{redis.port}/0") as stack:
            await _generate(stack)
            assert (await _generate(stack))[-1].done.usage.result_cached
            store = stack.gateway.cache.store  # type: ignore[union-attr]
            redis.stop()
            for _ in range(3):  # misses, never errors
                assert not (await _generate(stack))[-1].done.usage.result_cached
            assert store.breaker.is_open and store.breaker.num_opened == 1
            assert len(stack.fake.requests) == 4
            redis.start()
            await asyncio.sleep(0.35)  # past the cool-down: the next call is the trial
            await _generate(stack)  # Redis was emptied by the restart: a miss that stores again
            assert not store.breaker.is_open
            assert (await _generate(stack))[-1].done.usage.result_cached
            assert len(stack.fake.requests) == 5

    with redis_server() as redis:
        asyncio.run(main(redis))


def test_local_copies_answer_hits_without_redis_and_what_one_gateway_stores_another_finds() -> None:
    async def main(redis: RedisServer) -> None:
        url = f"redis://127.0.0.1:{redis.port}/0"
        async with redis_stack(url, local_ttl_s=60.0) as stack, redis_stack(url, local_ttl_s=60.0) as other:
            await _generate(stack)
            assert (await _generate(other))[-1].done.usage.result_cached  # read from Redis, now copied locally
            assert len(other.fake.requests) == 0
            redis.stop()
            assert (await _generate(stack))[-1].done.usage.result_cached
            assert (await _generate(other))[-1].done.usage.result_cached
            assert not (await _generate(stack, "Hello"))[-1].done.usage.result_cached  # a miss, not an error
            store = stack.gateway.cache.store  # type: ignore[union-attr]
            assert (store.num_local_hits, len(stack.fake.requests)) == (1, 2)

    with redis_server() as redis:
        asyncio.run(main(redis))
