"""Embedding cache keys hash exactly what shapes a vector; values round-trip as float32; the LRU answers batches."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest

from gateway.cache.embedding_cache import (
    FLOAT32,
    EmbeddingCache,
    VectorOptions,
    embedding_key,
    embedding_keys,
    encode_vector,
)
from gateway.cache.lru_store import LruStore
from gateway.cache.rows import row_of, rows_of
from gateway.schema import ModelCard
from services.common.allocator import MMAP_THRESHOLD_BYTES

CARD = ModelCard("minilm", revision="r1")
DEFAULT = VectorOptions(None, 0)
pytestmark = pytest.mark.timeout(30)


def test_key_is_namespaced_versioned_and_stable() -> None:
    key = embedding_key(CARD, "t", DEFAULT, [101, 7592, 102])
    assert key.startswith("flashstream:embedding:v1:") and len(key.rsplit(":", 1)[1]) == 64
    assert key == embedding_key(ModelCard("minilm", revision="r1", max_model_len=9), "t", DEFAULT, (101, 7592, 102))


def test_keys_hash_the_ids_as_little_endian_uint32_so_stored_v1_entries_keep_answering() -> None:
    inputs = [[101, 7592, 102], [0, 2**32 - 1], [70000], []]
    fields = b'{"dimensions":0,"model":"minilm","normalize":null,"revision":"r1","tenant":"t"}'
    expected = ["flashstream:embedding:v1:" + hashlib.sha256(fields + np.array(ids, dtype="<u4").tobytes()).hexdigest()
                for ids in inputs]
    assert embedding_keys(CARD, "t", DEFAULT, inputs) == expected
    assert expected[:3] == [
        "flashstream:embedding:v1:946e019428ee6020c89b6f523d78cd551519748564819e17798456820cd02cd1",
        "flashstream:embedding:v1:b5d9d3939924ef7de878a4ed5bc8620f1499a65a33f7a95e1632ea181d620e2a",
        "flashstream:embedding:v1:0a2abbbedfe28ed81c95b9dc72545281227bdeb012e47c036157854bb99f918e",
    ]


def test_token_ids_outside_uint32_cannot_make_a_key() -> None:
    for bad in ([-1], [2**32]):
        with pytest.raises(OverflowError):
            embedding_key(CARD, "t", DEFAULT, bad)


def test_every_field_that_shapes_a_vector_changes_the_key() -> None:
    base = embedding_key(CARD, "t", DEFAULT, [1, 2])
    variants = [
        embedding_key(ModelCard("other", revision="r1"), "t", DEFAULT, [1, 2]),
        embedding_key(ModelCard("minilm", revision="r2"), "t", DEFAULT, [1, 2]),
        embedding_key(CARD, "u", DEFAULT, [1, 2]),
        embedding_key(CARD, "t", VectorOptions(True, 0), [1, 2]),
        embedding_key(CARD, "t", VectorOptions(False, 0), [1, 2]),
        embedding_key(CARD, "t", VectorOptions(None, 8), [1, 2]),
        embedding_key(CARD, "t", DEFAULT, [2, 1]),
        embedding_key(CARD, "t", DEFAULT, [1, 2, 0]),
        embedding_key(CARD, "t", DEFAULT, [1 + (1 << 16), 2]),
    ]
    assert len({base, *variants}) == 10


def test_vectors_round_trip_as_little_endian_float32() -> None:
    values = [0.5, -1.25, 3.0e-8]
    raw = encode_vector(values)
    assert raw == np.array(values, dtype="<f4").tobytes() and len(raw) == 12
    assert row_of(raw, FLOAT32).tolist() == np.array(values, dtype=np.float32).tolist()
    assert row_of(b"abc", FLOAT32) is None and row_of(b"", FLOAT32) is None


def _rows(values: list[bytes | None]) -> list[np.ndarray | None]:
    return rows_of(values, FLOAT32)


def test_values_of_one_length_decode_as_rows_of_one_array_in_place_of_their_keys() -> None:
    a, b = np.array([1.0, -2.0], "<f4"), np.array([0.25, 8.0], "<f4")
    decoded = _rows([a.tobytes(), None, b.tobytes(), None])
    assert [None if v is None else v.tolist() for v in decoded] == [[1.0, -2.0], None, [0.25, 8.0], None]
    assert decoded[0].base is decoded[2].base and decoded[0].dtype == np.dtype("<f4")
    assert _rows([None, None]) == [None, None] and _rows([]) == []


def test_values_whose_joined_copy_would_reach_the_mmap_threshold_decode_as_views_of_each_value() -> None:
    raws = [np.full(1024, i, "<f4").tobytes() for i in range(MMAP_THRESHOLD_BYTES // 4096)]
    decoded = _rows([*raws, None])
    assert [v[0] for v in decoded[:-1]] == list(range(len(raws))) and decoded[-1] is None
    assert all(v.base is raw for v, raw in zip(decoded, raws))
    fewer = _rows(raws[:-1])
    assert fewer[0].base is fewer[1].base and fewer[0].base is not raws[0]


def test_values_of_mixed_or_unreadable_lengths_decode_one_by_one_and_the_unreadable_miss() -> None:
    three = np.array([1.0, 2.0, 3.0], "<f4").tobytes()
    decoded = _rows([three, b"\0" * 8, b"abc", b"", None])
    assert [None if v is None else v.tolist() for v in decoded] == [[1.0, 2.0, 3.0], [0.0, 0.0], None, None, None]
    assert _rows([b"abcde", b"fghij"]) == [None, None]
    assert _rows([b"", b""]) == [None, None]


def test_lookup_answers_each_key_in_order_and_unreadable_values_miss() -> None:
    async def main() -> None:
        store = LruStore(10, 10_000, 60.0)
        cache = EmbeddingCache(store)
        keys = cache.keys(CARD, "", DEFAULT, [[1], [2], [3]])
        await cache.save([keys[0], keys[2]], [np.array([1.0, 2.0]), np.array([3.0, 4.0])])
        store.put_nowait(keys[1], b"xyz")
        found = await cache.lookup(keys)
        assert (found[0].tolist(), found[1], found[2].tolist()) == ([1.0, 2.0], None, [3.0, 4.0])

    asyncio.run(main())


def test_lru_get_many_and_put_many_keep_the_bounds() -> None:
    async def main() -> None:
        store = LruStore(2, 1000, 60.0)
        await store.put_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
        assert await store.get_many(["a", "b", "c"]) == [None, b"2", b"3"]

    asyncio.run(main())
