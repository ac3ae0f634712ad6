"""The shared result store: Redis, one serialized value per key with a TTL.

Redis is optional to correctness: every call has a timeout, any failure is a miss (or a dropped write), and
a circuit breaker stops calling a Redis that keeps failing until its cool-down has passed. Connections open
lazily, so the gateway starts and serves while Redis is down.

Reads go over connections of the store's own (redis_connection.py), writes through redis-py. For a rediss:// URL
reads go through redis-py too, at its cost: those connections speak plain TCP or a Unix socket only, since opening
them with TLS would mean rebuilding every TLS option that redis-py reads from the URL.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.cache.breaker import CircuitBreaker
from gateway.cache.redis_connection import RedisConnection
from gateway.cache.redis_packing import pack_with_hiredis
from gateway.cache.rows import rows_of

log = logging.getLogger(__name__)


class RedisStore:
    def __init__(self, url: str, ttl_s: float, timeout_s: float, breaker: CircuitBreaker,
                 max_keys_per_mget: int = 128) -> None:
        if not ttl_s > 0 or not timeout_s > 0:
            raise ValueError("RedisStore needs ttl_s > 0 and timeout_s > 0")
        if max_keys_per_mget < 1:
            raise ValueError(f"RedisStore needs max_keys_per_mget >= 1, got {max_keys_per_mget}")
        self.url = url
        self.max_keys_per_mget = max_keys_per_mget
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.timeout_s = timeout_s
        self.breaker = breaker
        self.num_failures = 0  # all calls that failed or timed out, for tests and logs
        # No retries inside the client: a retry would outlive the timeout, and the breaker decides instead.
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
        self.packs_with_hiredis = pack_with_hiredis(self._client.connection_pool)
        address = parse_url(url)
        # None: reads through redis-py (TLS); else RedisConnection.open's arguments
        self._address: dict | None = None if address.get("connection_class") is SSLConnection else {
            "host": address.get("host", "localhost"), "port": address.get("port", 6379),
            "path": address.get("path", ""), "username": address.get("username"),
            "password": address.get("password"), "db": address.get("db", 0)}
        self._idle: list[RedisConnection] = []  # as many as the largest read needed at once

    async def _call(self, what: str, coro_fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await coro_fn(*args, **kwargs)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self.num_failures += 1
            was_open = self.breaker.is_open
            self.breaker.record_failure()
            if self.breaker.is_open and not was_open:
                log.warning("redis %s failing (%s: %s); bypassing it for %.1f s", self.url, type(exc).__name__,
                            exc, self.breaker.cooldown_s)
            return None
        if self.breaker.is_open:
            log.info("redis %s answers again", self.url)
        self.breaker.record_success()
        return result

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def put(self, key: str, value: bytes) -> None:
        await self._call("set", self._client.set, key, value, px=self.ttl_ms)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The stored values (None: missing), read as `_read` reads them."""
        if not keys:
            return []
        if self._address is None:
            values = await self._call("mget", self._mget_with_redis_py, self._parts(keys))
        else:
            values = await self._call("mget", self._read, keys, RedisConnection.values)
        return values if values is not None else [None] * len(keys)

    async def get_rows(self, keys: list[str], dtype: np.dtype) -> list[np.ndarray | None]:
        """The stored values as 1-D arrays of dtype (None: missing, or not whole items), copied out of the replies as
        the rows of one array per MGET where they share one length."""
        if not keys:
            return []
        if self._address is None:
            return rows_of(await self.get_many(keys), dtype)
        rows = await self._call("mget", self._read, keys, lambda conn: conn.rows(dtype))
        return rows if rows is not None else [None] * len(keys)

    def _parts(self, keys: list[str]) -> list[list[str]]:
        return [keys[i:i + self.max_keys_per_mget] for i in range(0, len(keys), self.max_keys_per_mget)]

    async def _read(self, keys: list[str], take) -> list:  # noqa: ANN001
        """MGETs of at most max_keys_per_mget keys, sent at once on idle connections (opened where too few are),
        in one call of the timeout and breaker: a failure of any is a miss for every key. `take` copies each
        connection's values out before it serves another read; a connection whose reply did not arrive whole is
        closed, never kept.

        Why not one MGET: from a Redis 7.0 server, the reply of a whole batch of wide vectors (a MB or more) on one
        connection now and then stalled many times longer than the read itself while other connections were in use,
        as in a gateway; replies of a few hundred KB did not. Sending them at once costs little more than one MGET,
        and each connection's copy of its values stays under the allocator's mmap threshold."""
        parts = self._parts(keys)
        conns: list[RedisConnection] = []
        try:
            while self._idle and len(conns) < len(parts):
                conn = self._idle.pop()
                if conn.is_idle:
                    conns.append(conn)
                else:  # closed by the server since its last read
                    conn.close()
            while len(conns) < len(parts):
                conns.append(await RedisConnection.open(**self._address))
            replies = [conn.request([("MGET", *part)]) for conn, part in zip(conns, parts)]
            await (replies[0] if len(replies) == 1 else asyncio.gather(*replies))
            return [value for conn in conns for value in take(conn)]
        finally:
            for conn in conns:
                if conn.is_idle:
                    self._idle.append(conn)
                else:
                    conn.close()

    async def _mget_with_redis_py(self, parts: list[list[str]]) -> list[bytes | None]:
        calls = [asyncio.ensure_future(self._client.mget(part)) for part in parts]
        try:
            replies = await asyncio.gather(*calls)
        finally:
            for call in calls:  # after a failure none outlives the call; a cancelled read drops its connection
                call.cancel()
        return [value for reply in replies for value in reply]

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        """One pipelined round trip of SETs with the TTL."""
        if not items:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, px=self.ttl_ms)
        await self._call("set", pipe.execute)

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        try:
            await self._client.aclose()
        except (aioredis.RedisError, OSError) as exc:
            log.debug("closing redis client: %s", exc)
