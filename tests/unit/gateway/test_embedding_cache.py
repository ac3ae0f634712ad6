"""Embedding cache keys hash exactly what shapes a vector; values round-trip as float32; the LRU answers batches."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.cache.embedding_cache import EmbeddingCache, VectorOptions, decode_vector, embedding_key, encode_vector
from gateway.cache.lru_store import LruStore
from gateway.schema import ModelCard

CARD = ModelCard("minilm", revision="r1")
DEFAULT = VectorOptions(None, 0)


def test_key_is_namespaced_versioned_and_stable() -> None:
    key = embedding_key(CARD, "t", DEFAULT, [101, 7592, 102])
    assert key.startswith("flashstream:embedding:v1:") and len(key.rsplit(":", 1)[1]) == 64
    assert key == embedding_key(ModelCard("minilm", revision="r1", max_model_len=9), "t", DEFAULT, (101, 7592, 102))


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
    assert decode_vector(raw).tolist() == np.array(values, dtype=np.float32).tolist()
    assert decode_vector(b"abc") is None and decode_vector(b"") is None


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
