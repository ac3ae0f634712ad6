"""The embedding cache: one entry per input vector, so a batch computes only the inputs not stored yet.

Key: `<namespace>:embedding:<version>:<sha256>` over the tenant, the model and its revision (which covers the
folder's pooling files), the request's normalisation (unset means the model's default, itself fixed by the
revision) and dimensions, and the input's exact token ids; equal token ids from a text or from ids share an
entry. Value: the vector as little-endian float32 bytes, read back as a row of float32 (rows.py; from Redis, copied
straight out of each MGET's reply; in the in-process LRU, decoded once per entry). The store is the result cache's
kind: an in-process LRU, or Redis (shared client, timeouts and circuit breaker: a Redis that fails answers misses)
with this process's short-lived copies in front (TieredStore).
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
    """One key per input: `<namespace>:embedding:<version>:<sha256>`, the digest continued by the input's ids as
    little-endian uint32 (array, not numpy: converting a short list of ints costs a numpy array several times more,
    and every input of a request pays it)."""
    prefix = f"{namespace}:embedding:{KEY_VERSION}:"
    copy = _fields_digest(card, tenant, options).copy
    keys = []
    for ids in inputs:
        packed = array(_UINT32, ids)
        if _BIG_ENDIAN:
            packed.byteswap()
        digest = copy()
        digest.update(packed)
        keys.append(prefix + digest.hexdigest())
    return keys


def embedding_key(card: ModelCard, tenant: str, options: VectorOptions, token_ids: Sequence[int],
                  namespace: str = "flashstream") -> str:
    return embedding_keys(card, tenant, options, [token_ids], namespace)[0]


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=FLOAT32).tobytes()


class EmbeddingCache:
    def __init__(self, store: ResultStore, namespace: str = "flashstream") -> None:
        self.store = store
        self.namespace = namespace

    def keys(self, card: ModelCard, tenant: str, options: VectorOptions, inputs: Sequence[Sequence[int]]) -> list[str]:
        return embedding_keys(card, tenant, options, inputs, self.namespace)

    async def lookup(self, keys: list[str]) -> list[np.ndarray | None]:
        """Each key's stored vector (float32), or None: missing, or a value that is not one."""
        return await self.store.get_rows(keys, FLOAT32)

    async def save(self, keys: list[str], vectors: Sequence[np.ndarray]) -> None:
        await self.store.put_many([(key, encode_vector(v)) for key, v in zip(keys, vectors)])

    async def close(self) -> None:
        await self.store.close()
