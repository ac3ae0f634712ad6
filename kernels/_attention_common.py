"""Pieces shared by the prefill and decode attention launchers and references."""

from __future__ import annotations

import torch

from kernels._checks import (
    FLOAT_DTYPES,
    FP8_DTYPE,
    check_inner_contiguous,
    check_kv_cache,
    check_like,
    check_same_device,
    check_tensor,
)


def check_paged_attention_args(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    num_seqs: int,
    out: torch.Tensor | None,
    **index_tensors: torch.Tensor,
) -> tuple[int, int, int, int]:
    """Checks q [*, num_heads, head_dim] against the cache, and that every tensor (the per-sequence index tensors
    included) is on one device; returns (num_heads, num_kv_heads, head_dim, block_size)."""
    check_tensor("q", q, 3, FLOAT_DTYPES)
    _, block_size, num_kv_heads, head_dim = check_kv_cache(key_cache, value_cache, q.dtype)
    num_heads = q.shape[1]
    if q.shape[2] != head_dim:
        raise ValueError(f"q head_dim {q.shape[2]} differs from the cache head_dim {head_dim}")
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    check_inner_contiguous("q", q)
    check_tensor("block_tables", block_tables, 2, (torch.int32,))
    if block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows for {num_seqs} sequences")
    check_inner_contiguous("block_tables", block_tables)
    if out is not None:
        check_like("out", out, q)
    check_same_device(q=q, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables, **index_tensors)
    return num_heads, num_kv_heads, head_dim, block_size


def check_prefill_args(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    out: torch.Tensor | None,
) -> tuple[int, int, int, int, int]:
    """The prefill launchers' checks (Triton and Gluon kernels alike); returns (num_seqs, num_heads, num_kv_heads,
    head_dim, block_size)."""
    check_tensor("query_start_loc", query_start_loc, 1, (torch.int32,))
    check_tensor("context_lens", context_lens, 1, (torch.int32,))
    num_seqs = context_lens.shape[0]
    if query_start_loc.shape[0] != num_seqs + 1:
        raise ValueError(f"query_start_loc must have num_seqs + 1 = {num_seqs + 1} entries, got {query_start_loc.shape[0]}")
    dims = check_paged_attention_args(q, key_cache, value_cache, block_tables, num_seqs, out,
                                      query_start_loc=query_start_loc, context_lens=context_lens)
    return (num_seqs, *dims)


def gather_kv_ref(cache: torch.Tensor, block_table_row: torch.Tensor, length: int, scale: float = 1.0) -> torch.Tensor:
    """[length, num_kv_heads, head_dim]: the first `length` cache entries of one sequence, in position order; an
    FP8 cache's entries dequantised to fp32 (times its scale)."""
    block_size = cache.shape[1]
    positions = torch.arange(length, device=cache.device)
    blocks = block_table_row.long()[positions // block_size]
    entries = cache[blocks, positions % block_size]
    return entries.float() * scale if entries.dtype == FP8_DTYPE else entries


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> torch.Tensor:
    """q: [num_queries, num_heads, d] = the last num_queries positions of k, v: [num_keys, num_kv_heads, d].
    fp32 math; returns [num_queries, num_heads, d] in q's dtype."""
    num_queries, num_heads, _ = q.shape
    num_keys, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    # [num_heads, num_keys, d]: each kv head serves `group` consecutive query heads.
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.matmul(q.float().transpose(0, 1), kf.transpose(1, 2)) * scale  # [num_heads, nq, nk]
    if causal:
        query_pos = torch.arange(num_keys - num_queries, num_keys, device=q.device)
        visible = torch.arange(num_keys, device=q.device)[None, :] <= query_pos[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, vf).transpose(0, 1).to(q.dtype)
