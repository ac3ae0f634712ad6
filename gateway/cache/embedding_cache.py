"""The embedding cache: one entry per input vector, so a batch computes only the inputs not stored yet.

Key: `<namespace>:embedding:<version>:<sha256>` over the tenant, the model and its revision (which covers the
folder's pooling files), the request's normalisation (unset means the model's default, itself fixed by the
revision) and dimensions, and the input's exact token ids; equal token ids from a text or from ids share an
entry. Value: the vector as little-endian float32 bytes. The store is the result cache's kind: an in-process LRU,
or Redis (shared client, timeouts and circuit breaker: a Redis that fails answers misses) with this process's
short-lived copies in front (TieredStore).
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.cache.lru_store import ResultStore
from gateway.schema import ModelCard
from services.common.allocator import MMAP_THRESHOLD_BYTES

KEY_VERSION = "v1"
FLOAT32 = np.dtype("<f4")  # parsed once: a dtype string costs as much as the frombuffer call it is passed to
_UINT32 = next(code for code in "IL" if array(code).itemsize == 4)
_BIG_ENDIAN = sys.byteorder == "big"


@dataclass(frozen=True, slots=True)
class VectorOptions:
    """What shapes a vector besides the model and the input."""

    normalize: bool | None  # None: the model's default
    dimensions: int  # 0: all


def _fields_digest(card: ModelCard, tenant: str, options: VectorOptions) -> "hashlib._Hash":
    """sha256 fed with everything but the token ids (one per request; each input's key continues a copy)."""
    fields = {"model": card.id, "revision": card.revision, "tenant": tenant,
              "normalize": options.normalize, "dimensions": options.dimensions}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())


def embedding_keys(card: ModelCard, tenant: str, options: VectorOptions, inputs: Sequence[Sequence[int]],
                   namespace: str = "flashstream") -> list[str]:
    """One key per input: `<namespace>:embedding:<version>:<sha256>`."""
    prefix = f"{namespace}:embedding:{KEY_VERSION}:"
    fields = _fields_digest(card, tenant, options)
    return [prefix + _continued(fields.copy(), ids) for ids in inputs]


def _continued(digest: "hashlib._Hash", ids: Sequence[int]) -> str:
    """The hex digest after feeding the ids as little-endian uint32 (array, not numpy: converting a short list
    of ints costs a numpy array several times more, and every input of a request pays it)."""
    packed = array(_UINT32, ids)
    if _BIG_ENDIAN:
        packed.byteswap()
    digest.update(packed)
    return digest.hexdigest()


def embedding_key(card: ModelCard, tenant: str, options: VectorOptions, token_ids: Sequence[int],
                  namespace: str = "flashstream") -> str:
    return embedding_keys(card, tenant, options, [token_ids], namespace)[0]


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=FLOAT32).tobytes()


def decode_vector(raw: bytes) -> np.ndarray | None:
    """The stored vector (float32), or None for a value that is not one (then it counts as a miss)."""
    if not raw or len(raw) % 4:
        return None
    return np.frombuffer(raw, dtype=FLOAT32)


def decode_vectors(raws: Sequence[bytes | None]) -> list[np.ndarray | None]:
    """decode_vector of each value (None stays None). When every stored value has one valid length, as a
    request's vectors do, and together they stay under the allocator's mmap threshold, they are decoded as the rows
    of one array: one frombuffer instead of one per input. A larger joined copy would be a fresh mapping, its pages
    faulted in on every lookup, which costs several times the frombuffer calls it saves."""
    found = [raw for raw in raws if raw is not None]
    sizes = {len(raw) for raw in found}
    if len(sizes) != 1 or not found[0] or len(found[0]) % 4 or len(found) * len(found[0]) >= MMAP_THRESHOLD_BYTES:
        return [None if raw is None else decode_vector(raw) for raw in raws]
    rows = iter(np.frombuffer(b"".join(found), dtype=FLOAT32).reshape(len(found), len(found[0]) // 4))
    return [None if raw is None else next(rows) for raw in raws]


class EmbeddingCache:
    def __init__(self, store: ResultStore, namespace: str = "flashstream") -> None:
        self.store = store
        self.namespace = namespace

    def keys(self, card: ModelCard, tenant: str, options: VectorOptions, inputs: Sequence[Sequence[int]]) -> list[str]:
        return embedding_keys(card, tenant, options, inputs, self.namespace)

    async def lookup(self, keys: list[str]) -> list[np.ndarray | None]:
        return decode_vectors(await self.store.get_many(keys))

    async def save(self, keys: list[str], vectors: Sequence[np.ndarray]) -> None:
        await self.store.put_many([(key, encode_vector(v)) for key, v in zip(keys, vectors)])

    async def close(self) -> None:
        await self.store.close()
