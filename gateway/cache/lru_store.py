"""The in-process result store: least recently used entries go first, bounded by count and by bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from gateway.cache.rows import rows_of


class ResultStore(Protocol):
    """Where stored answers live. Neither call raises: a store that fails answers a miss or drops the write."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def get_rows(self, keys: list[str], dtype: np.dtype) -> list[np.ndarray | None]:
        """get_many's values as 1-D arrays of dtype (None: missing, or not whole items)."""
        ...

    async def put_many(self, items: list[tuple[str, bytes]]) -> None: ...

    async def close(self) -> None: ...


class LruStore:
    """Entries expire after ttl_s; past max_entries or max_bytes (sum of values) the least recently used go."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or max_bytes < 1 or not ttl_s > 0:
            raise ValueError("LruStore needs max_entries >= 1, max_bytes >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.num_bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, expiry)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get_nowait(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        value, expiry = item
        if self._clock() >= expiry:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    def put_nowait(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return  # could never fit; storing it would only flush everything else
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (value, self._clock() + self.ttl_s)
        self.num_bytes += len(value)
        while len(self._entries) > self.max_entries or self.num_bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.num_bytes -= len(value)

    async def get(self, key: str) -> bytes | None:
        return self.get_nowait(key)

    async def put(self, key: str, value: bytes) -> None:
        self.put_nowait(key, value)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get_nowait(key) for key in keys]

    async def get_rows(self, keys: list[str], dtype: np.dtype) -> list[np.ndarray | None]:
        return rows_of([self.get_nowait(key) for key in keys], dtype)

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        for key, value in items:
            self.put_nowait(key, value)

    async def close(self) -> None:
        self._entries.clear()
        self.num_bytes = 0
