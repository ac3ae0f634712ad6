"""The embedding cache: one entry per input vector, so a batch computes only the inputs not stored yet.

Key: `<namespace>:embedding:<version>:<sha256>` over the tenant, the model and its revision (which covers the
folder's pooling files), the request's normalisation (unset means the model's default, itself fixed by the
revision) and dimensions, and the input's exact token ids; equal token ids from a text or from ids share an
entry. Value: the vector as little-endian float32 bytes. The store is the result cache's kind: an in-process LRU,
or Redis (shared client, timeouts and circuit breaker: a Redis that fails answers misses).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.cache.lru_store import ResultStore
from gateway.schema import ModelCard

KEY_VERSION = "v1"


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
    keys = []
    for ids in inputs:
        digest = fields.copy()
        digest.update(np.asarray(ids, dtype="<u4").tobytes())
        keys.append(prefix + digest.hexdigest())
    return keys


def embedding_key(card: ModelCard, tenant: str, options: VectorOptions, token_ids: Sequence[int],
                  namespace: str = "flashstream") -> str:
    return embedding_keys(card, tenant, options, [token_ids], namespace)[0]


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vector(raw: bytes) -> np.ndarray | None:
    """The stored vector (float32), or None for a value that is not one (then it counts as a miss)."""
    if not raw or len(raw) % 4:
        return None
    return np.frombuffer(raw, dtype="<f4")


class EmbeddingCache:
    def __init__(self, store: ResultStore, namespace: str = "flashstream") -> None:
        self.store = store
        self.namespace = namespace

    def keys(self, card: ModelCard, tenant: str, options: VectorOptions, inputs: Sequence[Sequence[int]]) -> list[str]:
        return embedding_keys(card, tenant, options, inputs, self.namespace)

    async def lookup(self, keys: list[str]) -> list[np.ndarray | None]:
        return [None if raw is None else decode_vector(raw) for raw in await self.store.get_many(keys)]

    async def save(self, keys: list[str], vectors: Sequence[np.ndarray]) -> None:
        await self.store.put_many([(key, encode_vector(v)) for key, v in zip(keys, vectors)])

    async def close(self) -> None:
        await self.store.close()
