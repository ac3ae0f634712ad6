"""Stored values read back as numpy rows: the embedding cache's vectors, one value each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.allocator import MMAP_THRESHOLD_BYTES


def row_of(value: bytes | None, dtype: np.dtype) -> np.ndarray | None:
    """The value as a 1-D array of dtype (a view), or None for no value or one that is not whole items."""
    if not value or len(value) % dtype.itemsize:
        return None
    return np.frombuffer(value, dtype=dtype)


def rows_of(values: Sequence[bytes | None], dtype: np.dtype) -> list[np.ndarray | None]:
    """row_of of each value. When every present value has one valid length, as a request's vectors do, and together
    they stay under the allocator's mmap threshold, they are decoded as the rows of one array: one frombuffer instead
    of one per value. A larger joined copy would be a fresh mapping, its pages faulted in on every read, which costs
    several times the frombuffer calls it saves."""
    found = [value for value in values if value is not None]
    sizes = {len(value) for value in found}
    if len(sizes) != 1 or not found[0] or len(found[0]) % dtype.itemsize or (
            len(found) * len(found[0]) >= MMAP_THRESHOLD_BYTES):
        return [None if value is None else row_of(value, dtype) for value in values]
    rows = iter(np.frombuffer(b"".join(found), dtype=dtype).reshape(len(found), len(found[0]) // dtype.itemsize))
    return [None if value is None else next(rows) for value in values]
