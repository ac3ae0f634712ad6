"""The Redis store's asyncio connections pack commands with hiredis, byte for byte as redis-py's own packer,
keeping the connection class that the URL's scheme calls for (no Redis needed: the client connects lazily)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from gateway.cache import redis_packing
from gateway.cache.breaker import CircuitBreaker
from gateway.cache.redis_packing import HiredisPacking, pack_with_hiredis
from gateway.cache.redis_store import RedisStore


class PackingConnection(HiredisPacking, Connection):
    pass


@pytest.mark.parametrize("command", [
    ("MGET", *(f"flashstream:embedding:v1:{i:064x}" for i in range(256))),
    ("SET", "flashstream:embedding:v1:ab", b"\x00\x01\xff" * 512, "PX", 86_400_000),
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
    ("GET", "clé-ünïcode"),
])
def test_hiredis_packs_every_command_exactly_as_redis_py_does(command: tuple) -> None:
    python_packed = b"".join(Connection().pack_command(*command))
    assert b"".join(PackingConnection().pack_command(*command)) == python_packed
    assert python_packed.startswith(b"*")


@pytest.mark.parametrize(("url", "base"), [
    ("redis://127.0.0.1:1/0", Connection),
    ("rediss://127.0.0.1:1/0", SSLConnection),
    ("unix:///tmp/no-such-redis.sock", UnixDomainSocketConnection),
])
def test_the_store_packs_with_hiredis_on_the_connection_class_of_its_url(url: str, base: type) -> None:
    store = RedisStore(url, 60.0, 0.5, CircuitBreaker(3, 1.0))
    cls = store._client.connection_pool.connection_class
    assert store.packs_with_hiredis is True
    assert issubclass(cls, HiredisPacking) and issubclass(cls, base) and cls.__name__ == f"Hiredis{base.__name__}"
    assert pack_with_hiredis(store._client.connection_pool) is True
    assert store._client.connection_pool.connection_class is cls  # applied once, not stacked
    asyncio.run(store.close())


def test_without_hiredis_the_pool_keeps_redis_pys_packer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_packing, "HIREDIS_AVAILABLE", False)
    store = RedisStore("redis://127.0.0.1:1/0", 60.0, 0.5, CircuitBreaker(3, 1.0))
    assert store.packs_with_hiredis is False
    assert store._client.connection_pool.connection_class is Connection
    asyncio.run(store.close())
