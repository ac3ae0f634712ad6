"""The in-process result store: least recently used entries go first, bounded by count and by bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from gateway.cache.rows import row_of


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
    """Entries expire after ttl_s; past max_entries or max_bytes (sum of values) the least recently used go.

    A value read as a row is decoded once: its row (a read-only view of the stored bytes, no copy) stays with the
    entry, so every later read of a popular vector costs a dictionary lookup. A kept row adds its array header (about
    a hundred bytes) to the entry, outside max_bytes."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or max_bytes < 1 or not ttl_s > 0:
            raise ValueError("LruStore needs max_entries >= 1, max_bytes >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.num_bytes = 0
        self._clock = clock
        # key -> (value, expiry, its row once read as one, else None)
        self._entries: OrderedDict[str, tuple[bytes, float, np.ndarray | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get_nowait(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        value, expiry, _ = item
        if self._clock() >= expiry:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    def get_rows_nowait(self, keys: list[str], dtype: np.dtype) -> list[np.ndarray | None]:
        """Each key's value as a 1-D array of dtype (None: missing, expired, or not whole items), as get_nowait
        reads it."""
        entries = self._entries
        now = self._clock()
        rows: list[np.ndarray | None] = []
        for key in keys:
            item = entries.get(key)
            if item is None:
                rows.append(None)
                continue
            value, expiry, row = item
            if now >= expiry:
                self._remove(key)
                rows.append(None)
                continue
            entries.move_to_end(key)
            if row is None or row.dtype is not dtype:
                row = row_of(value, dtype)
                if row is not None:
                    entries[key] = (value, expiry, row)
            rows.append(row)
        return rows

    def put_nowait(self, key: str, value: bytes) -> None:
        self.put_many_nowait([(key, value)])

    def put_many_nowait(self, items: list[tuple[str, bytes]]) -> None:
        """Stores each item in turn, at one reading of the clock, then lets the least recently used go until the
        bounds hold: the entries kept are those that putting one item at a time would keep."""
        entries = self._entries
        expiry = self._clock() + self.ttl_s
        for key, value in items:
            if len(value) > self.max_bytes:
                continue  # could never fit; storing it would only flush everything else
            if key in entries:
                self._remove(key)
            entries[key] = (value, expiry, None)
            self.num_bytes += len(value)
        while len(entries) > self.max_entries or self.num_bytes > self.max_bytes:
            self._remove(next(iter(entries)))

    def _remove(self, key: str) -> None:
        value, _, _ = self._entries.pop(key)
        self.num_bytes -= len(value)

    async def get(self, key: str) -> bytes | None:
        return self.get_nowait(key)

    async def put(self, key: str, value: bytes) -> None:
        self.put_nowait(key, value)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get_nowait(key) for key in keys]

    async def get_rows(self, keys: list[str], dtype: np.dtype) -> list[np.ndarray | None]:
        return self.get_rows_nowait(keys, dtype)

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        self.put_many_nowait(items)

    async def close(self) -> None:
        self._entries.clear()
        self.num_bytes = 0
