"""Paged flash attention for prefill: packed variable-length queries over a paged KV cache.

Each sequence's queries are the last positions of its context, so one kernel serves a plain prefill, a chunk of a
chunked prefill and a prefix-cache hit. causal=False gives encoder (bidirectional) attention.
"""

from __future__ import annotations

import torch

from kernels._attention_common import attention_ref, check_paged_attention_args, gather_kv_ref
from kernels._checks import check_launchable, check_same_device, check_tensor


def _check_args(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    out: torch.Tensor | None,
) -> tuple[int, int, int, int, int]:
    check_tensor("query_start_loc", query_start_loc, 1, (torch.int32,))
    check_tensor("context_lens", context_lens, 1, (torch.int32,))
    num_seqs = context_lens.shape[0]
    if query_start_loc.shape[0] != num_seqs + 1:
        raise ValueError(f"query_start_loc must have num_seqs + 1 = {num_seqs + 1} entries, got {query_start_loc.shape[0]}")
    dims = check_paged_attention_args(q, key_cache, value_cache, block_tables, num_seqs, out)
    tensors = dict(q=q, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                   query_start_loc=query_start_loc, context_lens=context_lens)
    if out is not None:
        tensors["out"] = out
    check_same_device(**tensors)
    return (num_seqs, *dims)


def paged_prefill_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    causal: bool = True,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim]; caches: [num_blocks, block_size, num_kv_heads, head_dim];
    block_tables: [num_seqs, max_blocks] int32; query_start_loc: [num_seqs + 1] int32; context_lens: [num_seqs]
    int32. Returns [num_tokens, num_heads, head_dim] in q's dtype."""
    _check_args(q, key_cache, value_cache, block_tables, query_start_loc, context_lens, out)
    check_launchable(q.device)
    raise NotImplementedError("the Triton prefill kernel is not in this revision yet; use paged_prefill_attention_ref")


def paged_prefill_attention_ref(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    causal: bool = True,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch version of paged_prefill_attention (same arguments; fp32 math)."""
    num_seqs = _check_args(q, key_cache, value_cache, block_tables, query_start_loc, context_lens, out)[0]
    result = out if out is not None else torch.empty_like(q)
    starts, lens = query_start_loc.tolist(), context_lens.tolist()
    for i in range(num_seqs):
        begin, end = starts[i], starts[i + 1]
        if end - begin > lens[i]:
            raise ValueError(f"sequence {i} has {end - begin} queries but a context of only {lens[i]}")
        if end == begin:
            continue
        k = gather_kv_ref(key_cache, block_tables[i], lens[i])
        v = gather_kv_ref(value_cache, block_tables[i], lens[i])
        result[begin:end] = attention_ref(q[begin:end], k, v, scale, causal)
    return result
