"""A shared store (Redis) with this process's own short-lived copy of what it read or wrote there in front.

Search traffic asks the same popular questions again and again: without a local tier every one of those hits waits
for a Redis round trip, and fails over to a miss while Redis is down. A stored value never changes under its key
(the key hashes everything that shapes it), so a local copy can only be stale by outliving the shared entry's TTL,
and the local TTL bounds that. Gateways stay interchangeable: what one stores, every other still finds in Redis.
"""

from __future__ import annotations

import numpy as np

from gateway.cache.lru_store import LruStore, ResultStore


class TieredStore:
    """`local` answers what it holds; everything else is read from `shared` and kept in `local` (its TTL and size
    bounds apply). Writes go to both. Neither call raises, as of every ResultStore."""

    def __init__(self, local: LruStore, shared: ResultStore) -> None:
        self.local = local
        self.shared = shared
        self.num_local_hits = 0  # reads that `shared` never saw

    async def get(self, key: str) -> bytes | None:
        value = self.local.get_nowait(key)
        if value is not None:
            self.num_local_hits += 1
            return value
        value = await self.shared.get(key)
        if value is not None:
            self.local.put_nowait(key, value)
        return value

    async def put(self, key: str, value: bytes) -> None:
        self.local.put_nowait(key, value)
        await self.shared.put(key, value)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        values = [self.local.get_nowait(key) for key in keys]
        missing = [i for i, value in enumerate(values) if value is None]
        self.num_local_hits += len(keys) - len(missing)
        if missing:
            for i, value in zip(missing, await self.shared.get_many([keys[i] for i in missing])):
                if value is not None:
                    self.local.put_nowait(keys[i], value)
                    values[i] = value
        return values

    async def get_rows(self, keys: list[str], dtype: np.dtype) -> list[np.ndarray | None]:
        """Local copies' rows as `local` reads them; the rest (a local copy that is no row included) as `shared` reads
        them, each row kept locally as its bytes."""
        rows = self.local.get_rows_nowait(keys, dtype)
        missing = [i for i, row in enumerate(rows) if row is None]
        self.num_local_hits += len(keys) - len(missing)
        if missing:
            found = [(i, row) for i, row in zip(missing, await self.shared.get_rows([keys[i] for i in missing], dtype))
                     if row is not None]
            self.local.put_many_nowait([(keys[i], row.tobytes()) for i, row in found])
            for i, row in found:
                rows[i] = row
        return rows

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        self.local.put_many_nowait(items)
        await self.shared.put_many(items)

    async def close(self) -> None:
        await self.local.close()
        await self.shared.close()
