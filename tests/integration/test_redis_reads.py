"""The Redis store's reads on its own connections, against a real Redis server: exact values and rows, AUTH and db
from the URL, a Unix socket, and misses (never errors, never a connection left with unread bytes) when Redis is
slow, cuts a reply short or the read is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from bench.redis_server import REDIS, redis_server
from gateway.cache.breaker import CircuitBreaker
from gateway.cache.redis_connection import RedisConnection
from gateway.cache.redis_store import RedisStore

pytestmark = [pytest.mark.skipif(REDIS is None, reason="redis-server is not installed"), pytest.mark.timeout(60)]
F32 = np.dtype("<f4")


def _vector(i: int, width: int = 1024) -> np.ndarray:
    return np.arange(width, dtype=F32) + i


async def _store_vectors(url: str, keys: list[str], width: int = 1024) -> None:
    raw = aioredis.Redis.from_url(url)
    try:
        await raw.mset({key: _vector(i, width).tobytes() for i, key in enumerate(keys)})
    finally:
        await raw.aclose()


@contextlib.asynccontextmanager
async def _proxy(port: int, first_reply_bytes: int = -1, chunk: int = 0) -> AsyncIterator[int]:
    """A TCP proxy in front of Redis on `port`. Its first connection forwards only `first_reply_bytes` of what Redis
    answers and then closes (-1: all of it); every connection forwards Redis's answers `chunk` bytes at a time
    (0: as they come)."""
    connections = 0
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int, step: int) -> None:
        sent = 0
        while limit < 0 or sent < limit:
            data = await reader.read(65536)
            if not data:
                break
            if limit >= 0:
                data = data[:limit - sent]
            for i in range(0, len(data), step or len(data)):
                writer.write(data[i:i + (step or len(data))])
                await writer.drain()
            sent += len(data)
        writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        limit = first_reply_bytes if connections == 1 else -1
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", port)
        writers.extend([client_writer, redis_writer])
        await asyncio.gather(pipe(client_reader, redis_writer, -1, 0), pipe(redis_reader, client_writer, limit, chunk),
                             return_exceptions=True)
        redis_writer.close()
        client_writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.05)  # the pipes see their ends closed and finish


def test_a_batch_comes_back_as_exact_values_and_rows_with_misses_and_unreadable_values_in_place() -> None:
    async def main(url: str) -> None:
        keys = [f"v:{i}" for i in range(300)]
        await _store_vectors(url, keys[:260])
        raw = aioredis.Redis.from_url(url)
        await raw.mset({"v:5": b"abc", "v:6": b"", "v:7": _vector(7, 3).tobytes()})
        await raw.delete("v:8")
        await raw.aclose()
        store = RedisStore(url, 60.0, 0.5, CircuitBreaker(3, 1.0))
        values = await store.get_many(keys)
        rows = await store.get_rows(keys, F32)
        assert values[:9] == [_vector(i).tobytes() for i in range(5)] + [b"abc", b"", _vector(7, 3).tobytes(), None]
        assert values[9:260] == [_vector(i).tobytes() for i in range(9, 260)] and values[260:] == [None] * 40
        assert [i for i, row in enumerate(rows) if row is None] == [5, 6, 8, *range(260, 300)]
        assert all(rows[i].dtype == F32 and rows[i].tolist() == _vector(i, 3 if i == 7 else 1024).tolist()
                   for i in [*range(5), 7, *range(9, 260)])
        assert await store.get("v:3") == _vector(3).tobytes() and await store.get("nope") is None
        assert (store.num_failures, len(store._idle)) == (0, 3)  # 300 keys: MGETs of 128, 128 and 44 at once
        await store.close()

    with redis_server() as redis:
        asyncio.run(main(redis.url))


def test_rows_of_one_width_are_copies_one_array_per_mget_that_outlive_the_next_read() -> None:
    async def main(url: str) -> None:
        keys = [f"v:{i}" for i in range(256)]
        await _store_vectors(url, keys)
        store = RedisStore(url, 60.0, 0.5, CircuitBreaker(3, 1.0))
        rows = await store.get_rows(keys, F32)
        assert [rows[0].base is rows[127].base, rows[128].base is rows[255].base, rows[0].base is rows[128].base] == [
            True, True, False]
        assert rows[0].base.shape == (128, 1024) and rows[0].base.flags.c_contiguous
        await store.get_rows(keys[::-1], F32)  # the connections' buffers now hold another reply
        assert all(row.tolist() == _vector(i).tolist() for i, row in enumerate(rows))
        await store.close()

    with redis_server() as redis:
        asyncio.run(main(redis.url))


def test_a_reply_that_arrives_a_few_bytes_at_a_time_reads_exactly() -> None:
    async def main(port: int) -> None:
        keys = [f"v:{i}" for i in range(40)]
        await _store_vectors(f"redis://127.0.0.1:{port}/0", keys[:30], width=8)
        async with _proxy(port, chunk=5) as proxied:
            store = RedisStore(f"redis://127.0.0.1:{proxied}/0", 60.0, 5.0, CircuitBreaker(3, 1.0))
            rows = await store.get_rows(keys, F32)
            assert [row.tolist() for row in rows[:30]] == [_vector(i, 8).tolist() for i in range(30)]
            assert rows[30:] == [None] * 10 and store.num_failures == 0
            await store.close()

    with redis_server() as redis:
        asyncio.run(main(redis.port))



def test_runs_of_one_length_broken_by_other_lengths_and_misses_read_exactly_whatever_bytes_arrive_at_once() -> None:
    widths = [8] * 20 + [4] * 3 + [0] + [8] * 30 + [80] + [8] * 9 + [0, 0] + [4] * 12 + [8]  # 0: a miss
    keys = [f"w:{i}" for i in range(len(widths))]

    async def main(port: int) -> None:
        raw = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        await raw.mset({key: _vector(i, w).tobytes() for i, (key, w) in enumerate(zip(keys, widths)) if w})
        await raw.aclose()
        for chunk in (0, 3001, 97):
            async with _proxy(port, chunk=chunk) as proxied:
                store = RedisStore(f"redis://127.0.0.1:{proxied}/0", 60.0, 5.0, CircuitBreaker(3, 1.0))
                values, rows = await store.get_many(keys), await store.get_rows(keys, F32)
                assert values == [_vector(i, w).tobytes() if w else None for i, w in enumerate(widths)], chunk
                assert [None if row is None else row.tolist() for row in rows] == [
                    _vector(i, w).tolist() if w else None for i, w in enumerate(widths)], chunk
                assert store.num_failures == 0
                await store.close()

    with redis_server() as redis:
        asyncio.run(main(redis.port))

def test_password_user_and_db_come_from_the_url_and_a_refused_login_is_a_miss() -> None:
    async def main(port: int) -> None:
        raw = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        await raw.execute_command("ACL", "SETUSER", "reader", "on", ">secret", "~*", "+@all")
        await raw.select(3)
        await raw.set("k", b"in db 3")
        await raw.config_set("requirepass", "topsecret")  # the default user's password, for URLs without a user
        await raw.aclose()
        stores = [RedisStore(url, 60.0, 0.5, CircuitBreaker(3, 1.0)) for url in (
            f"redis://reader:secret@127.0.0.1:{port}/3", f"redis://:topsecret@127.0.0.1:{port}/3",
            f"redis://:topsecret@127.0.0.1:{port}/0", f"redis://reader:wrong@127.0.0.1:{port}/3",
            f"redis://127.0.0.1:{port}/3")]
        found = [await store.get_many(["k"]) for store in stores]
        assert found == [[b"in db 3"], [b"in db 3"], [None], [None], [None]]
        assert [store.num_failures for store in stores] == [0, 0, 0, 1, 1]
        for store in stores:
            await store.close()

    with redis_server() as redis:
        asyncio.run(main(redis.port))


def test_a_unix_socket_url_reads_through_the_socket(tmp_path: Path) -> None:
    async def main(url: str) -> None:
        await _store_vectors(url, ["a", "b"], width=4)
        store = RedisStore(f"unix://{tmp_path / 'redis.sock'}?db=0", 60.0, 0.5, CircuitBreaker(3, 1.0))
        assert [row.tolist() for row in await store.get_rows(["a", "b"], F32)] == [[0, 1, 2, 3], [1, 2, 3, 4]]
        assert store._idle[0]._transport.get_extra_info("socket").family == socket.AF_UNIX
        await store.close()

    with redis_server(unix_socket=str(tmp_path / "redis.sock")) as redis:
        asyncio.run(main(redis.url))


def test_a_redis_that_closes_mid_reply_gives_misses_and_the_next_read_is_exact() -> None:
    async def main(port: int) -> None:
        keys = [f"v:{i}" for i in range(100)]
        await _store_vectors(f"redis://127.0.0.1:{port}/0", keys)
        async with _proxy(port, first_reply_bytes=200_000) as proxied:
            store = RedisStore(f"redis://127.0.0.1:{proxied}/0", 60.0, 0.5, CircuitBreaker(3, 1.0))
            assert await store.get_rows(keys, F32) == [None] * 100
            assert (store.num_failures, store._idle) == (1, [])
            rows = await store.get_rows(keys, F32)
            assert [row.tolist() for row in rows] == [_vector(i).tolist() for i in range(100)]
            assert (store.num_failures, len(store._idle), store.breaker.is_open) == (1, 1, False)
            await store.close()

    with redis_server() as redis:
        asyncio.run(main(redis.port))


def test_a_read_past_the_timeout_or_cancelled_is_a_miss_and_its_connection_is_closed_not_kept() -> None:
    async def main(url: str) -> None:
        keys = [f"v:{i}" for i in range(200)]
        await _store_vectors(url, keys)
        store = RedisStore(url, 60.0, 0.1, CircuitBreaker(3, 1.0))
        assert len(await store.get_rows(keys, F32)) == 200  # two connections now idle
        raw = aioredis.Redis.from_url(url)
        await raw.execute_command("CLIENT", "PAUSE", 300, "ALL")  # replies come after the pause
        assert await store.get_rows(keys, F32) == [None] * 200
        assert (store.num_failures, store._idle) == (1, [])
        read = asyncio.create_task(store.get_many(keys))
        await asyncio.sleep(0.05)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert store._idle == []
        await asyncio.sleep(0.3)  # the pause is over: the late replies go to closed connections
        rows = await store.get_rows(keys[::-1], F32)
        assert [row.tolist() for row in rows] == [_vector(199 - i).tolist() for i in range(200)]
        assert (store.num_failures, len(store._idle)) == (1, 2)
        await raw.aclose()
        await store.close()

    with redis_server() as redis:
        asyncio.run(main(redis.url))


def test_a_connection_refuses_a_second_request_while_one_is_in_flight() -> None:
    async def main(port: int) -> None:
        conn = await RedisConnection.open("127.0.0.1", port)
        first = conn.request([("MGET", "a")])
        with pytest.raises(ConnectionError, match="in flight"):
            conn.request([("MGET", "b")])
        await first
        assert (conn.values(), conn.is_idle) == ([None], True)
        conn.close()

    with redis_server() as redis:
        asyncio.run(main(redis.port))
