"""Paged decode attention, one query token per sequence, with split-KV (flash-decoding) and a reduction."""

from __future__ import annotations

import torch

from kernels._attention_common import attention_ref, check_paged_attention_args, gather_kv_ref
from kernels._checks import check_launchable, check_same_device, check_tensor


def _check_args(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    out: torch.Tensor | None,
) -> tuple[int, int, int, int, int]:
    check_tensor("context_lens", context_lens, 1, (torch.int32,))
    num_seqs = context_lens.shape[0]
    if q.dim() >= 1 and q.shape[0] != num_seqs:
        raise ValueError(f"q has {q.shape[0]} rows but context_lens has {num_seqs} sequences (one query each)")
    dims = check_paged_attention_args(q, key_cache, value_cache, block_tables, num_seqs, out)
    tensors = dict(q=q, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                   context_lens=context_lens)
    if out is not None:
        tensors["out"] = out
    check_same_device(**tensors)
    return (num_seqs, *dims)


def paged_decode_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_context_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [num_seqs, num_heads, head_dim] at position context_lens[i] - 1; caches: [num_blocks, block_size,
    num_kv_heads, head_dim]; block_tables: [num_seqs, max_blocks] int32; context_lens: [num_seqs] int32.
    With max_context_len and num_splits given the call never syncs (CUDA-graph safe)."""
    _check_args(q, key_cache, value_cache, block_tables, context_lens, out)
    check_launchable(q.device)
    raise NotImplementedError("the Triton decode kernel is not in this revision yet; use paged_decode_attention_ref")


def paged_decode_attention_ref(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_context_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch version of paged_decode_attention (same arguments; fp32 math)."""
    num_seqs = _check_args(q, key_cache, value_cache, block_tables, context_lens, out)[0]
    result = out if out is not None else torch.empty_like(q)
    for i, length in enumerate(context_lens.tolist()):
        if length < 1:
            raise ValueError(f"sequence {i} has context length {length}; decode needs at least 1")
        k = gather_kv_ref(key_cache, block_tables[i], length)
        v = gather_kv_ref(value_cache, block_tables[i], length)
        result[i : i + 1] = attention_ref(q[i : i + 1], k, v, scale, causal=True)
    return result
