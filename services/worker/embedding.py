"""Embeddings for Worker.Embed: one forward pass over packed inputs, then pooling.

The inputs run as one prefill over a scratch paged KV cache sized to the batch, which every layer shares (each
layer writes its keys and values and reads them back before the next layer overwrites them), so a decoder's
live sequences' blocks are never touched and an encoder needs no KV cache at all. Batches larger than
`max_num_batched_tokens` run in several passes so activations stay within what the worker profiled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from services.common.errors import InvalidArgument
from services.worker.attention_metadata import SeqChunk, build_attention_metadata
from services.worker.pooling import PoolingConfig, finish_vectors, pool


@dataclass(frozen=True, slots=True)
class EmbeddingShape:
    """What the scratch cache of one pass looks like and what inputs are valid."""

    num_layers: int  # decoder layers that each get the shared scratch; 0 for an encoder (one shared pair)
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_len: int
    block_size: int
    max_num_batched_tokens: int


class Embedder:
    """Pools a model's final hidden states into one vector per input."""

    def __init__(self, model: nn.Module, shape: EmbeddingShape, pooling: PoolingConfig) -> None:
        self.model = model
        self.shape = shape
        self.pooling = pooling

    def check(self, inputs: Sequence[Sequence[int]], dimensions: int) -> None:
        s = self.shape
        if not 0 <= dimensions <= s.hidden_size:
            raise InvalidArgument(f"dimensions must be between 1 and {s.hidden_size}, got {dimensions}")
        for i, ids in enumerate(inputs):
            if not ids:
                raise InvalidArgument(f"input {i} has no tokens")
            if len(ids) > s.max_len:
                raise InvalidArgument(f"input {i} has {len(ids)} tokens, more than the model's limit {s.max_len}")
            if any(not 0 <= t < s.vocab_size for t in ids):
                raise InvalidArgument(f"input {i} has a token id outside the vocabulary of {s.vocab_size}")

    @torch.inference_mode()
    def embed(self, inputs: Sequence[Sequence[int]], normalize: bool | None = None,
              dimensions: int = 0) -> list[list[float]]:
        """One vector per input, in input order; normalize None means the model's default."""
        self.check(inputs, dimensions)
        if normalize is None:
            normalize = self.pooling.normalize
        vectors: list[list[float]] = []
        for batch in self._passes(inputs):
            pooled = self._pooled(batch)  # [len(batch), hidden] fp32
            vectors.extend(finish_vectors(pooled, dimensions, normalize).cpu().tolist())
        return vectors

    def _passes(self, inputs: Sequence[Sequence[int]]) -> list[Sequence[Sequence[int]]]:
        passes, start, tokens = [], 0, 0
        for i, ids in enumerate(inputs):
            if i > start and tokens + len(ids) > self.shape.max_num_batched_tokens:
                passes.append(inputs[start:i])
                start, tokens = i, 0
            tokens += len(ids)
        if start < len(inputs):
            passes.append(inputs[start:])
        return passes

    def _pooled(self, inputs: Sequence[Sequence[int]]) -> torch.Tensor:
        s = self.shape
        param = next(self.model.parameters())
        chunks, next_block = [], 0
        for ids in inputs:
            num_blocks = -(-len(ids) // s.block_size)
            chunks.append(SeqChunk(0, len(ids), range(next_block, next_block + num_blocks)))
            next_block += num_blocks
        cache_shape = (next_block, s.block_size, s.num_kv_heads, s.head_dim)
        scratch = (torch.zeros(cache_shape, dtype=param.dtype, device=param.device),
                   torch.zeros(cache_shape, dtype=param.dtype, device=param.device))
        meta = build_attention_metadata(chunks, s.block_size, param.device)
        input_ids = torch.tensor([t for ids in inputs for t in ids], dtype=torch.int64, device=param.device)
        caches = scratch if s.num_layers == 0 else [scratch] * s.num_layers
        hidden = self.model(input_ids, meta, caches)  # [num_tokens, hidden]
        lengths = torch.tensor([len(ids) for ids in inputs], device=param.device)
        return pool(hidden, lengths, self.pooling.mode)
