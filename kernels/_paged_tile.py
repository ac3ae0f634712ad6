"""Triton helpers shared by the paged attention kernels: one online-softmax step over a tile of paged K/V."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634


def needs_int64_offsets(*tensors: torch.Tensor) -> bool:
    """True when an element offset into one of the tensors can reach 2**31 (int32 arithmetic would wrap)."""
    return any(sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 0) >= 2**31 - 1 for t in tensors)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tests compare with an fp32 reference); 16-bit types ignore this."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def attend_paged_tile(
    acc, m_i, l_i, q,
    k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset,
    n_start, kv_len, query_pos, qk_scale_log2,
    stride_cb, stride_cs,
    offs_d, d_mask,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, EVEN_D: tl.constexpr,
    MASK_KV: tl.constexpr, CAUSAL_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr, INT64_OFFSETS: tl.constexpr,
):
    """acc: [M, D] fp32, m_i and l_i: [M] fp32 running max (log2 units) and sum; q: [M, D].

    The tile covers keys n_start .. n_start + BLOCK_N; with MASK_KV keys >= kv_len are dropped, with CAUSAL_MASK
    keys after each row's query_pos ([M]) are dropped. Key n lives at page table_row[n // PAGE_SIZE], slot
    n % PAGE_SIZE, so one tile gathers BLOCK_N / PAGE_SIZE pages row by row.
    """
    offs_n = n_start + tl.arange(0, BLOCK_N)
    if MASK_KV:
        kv_valid = offs_n < kv_len
        page = tl.load(table_row_ptr + offs_n // PAGE_SIZE, mask=kv_valid, other=0)
    else:
        page = tl.load(table_row_ptr + offs_n // PAGE_SIZE)
    # int64 only where page * stride_cb can pass 2**31 (a cache of more than 2**31 elements): 32-bit
    # offsets need fewer registers and integer instructions in the hot loop.
    if INT64_OFFSETS:
        page = page.to(tl.int64)
    row_offsets = page * stride_cb + (offs_n % PAGE_SIZE) * stride_cs + kv_head_offset
    ptrs = row_offsets[:, None] + offs_d[None, :]  # [BLOCK_N, D]
    if MASK_KV:
        load_mask = kv_valid[:, None]
        if not EVEN_D:
            load_mask = load_mask & d_mask[None, :]
        k = tl.load(k_cache_ptr + ptrs, mask=load_mask, other=0.0)
    elif EVEN_D:
        k = tl.load(k_cache_ptr + ptrs)
    else:
        k = tl.load(k_cache_ptr + ptrs, mask=d_mask[None, :], other=0.0)

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2  # [M, BLOCK_N], log2 units
    if MASK_KV:
        s = tl.where(kv_valid[None, :], s, float("-inf"))
    if CAUSAL_MASK:
        s = tl.where(offs_n[None, :] <= query_pos[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)

    if MASK_KV:
        v = tl.load(v_cache_ptr + ptrs, mask=load_mask, other=0.0)
    elif EVEN_D:
        v = tl.load(v_cache_ptr + ptrs)
    else:
        v = tl.load(v_cache_ptr + ptrs, mask=d_mask[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i
