"""Paged flash attention for prefill: packed variable-length queries over a paged KV cache.

Each sequence's queries are the last positions of its context, so one kernel serves a plain prefill, a chunk of a
chunked prefill and a prefix-cache hit. causal=False gives encoder (bidirectional) attention.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._attention_common import attention_ref, check_prefill_args, gather_kv_ref
from kernels._checks import FP8_DTYPE, check_launchable
from kernels._paged_tile import (
    ASM_PAGES,
    LOG2_E,
    VECTOR_PAGES,
    WIDEN_FP16,
    attend_paged_tile,
    attend_paged_tile_halves,
    dot_precision,
    needs_int64_offsets,
    query_for_cache,
    resolve_page_loads,
)
from kernels.launch_memo import register_memo
from kernels.prefill_gluon import hopper_prefill_unsupported_reason, launch_hopper_prefill


@dataclass(frozen=True)
class PrefillConfig:
    """Tile shape and pipelining of the prefill kernel (launch parameters, so tests can pick large CPU tiles)."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    page_loads: int = ASM_PAGES  # kernels/_paged_tile.py: how a tile looks up its pages
    # Two independent half-height row blocks per program: one's score product overlaps the other's softmax.
    split_rows: bool = False

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")


@functools.lru_cache(maxsize=64)
def default_prefill_config(head_dim: int, block_size: int) -> PrefillConfig:
    """The fastest variants of the H100 sweeps (bench/EXPERIMENTS.md), causal bf16 at 16k tokens per launch."""
    if head_dim <= 64:
        return PrefillConfig(block_m=128, block_n=64, num_warps=8, num_stages=3, page_loads=ASM_PAGES)
    # d128: two 4-warp programs per SM (99 KB of shared memory each), since Triton waits for each score product
    # before the softmax and only a second program on the SM overlaps the two. Vector page loads keep that fit
    # (inline-assembly ones give K/V a third buffer and room for one program only); the two row halves cut spills.
    return PrefillConfig(block_m=128, block_n=64, num_warps=4, num_stages=3, page_loads=VECTOR_PAGES,
                         split_rows=True)


register_memo(default_prefill_config.cache_clear)


@triton.jit(do_not_specialize=["stride_bt"])
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_tables_ptr, query_start_loc_ptr, context_lens_ptr,
    qk_scale_log2,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_cb, stride_cs, stride_ch, stride_bt,
    QUERIES_PER_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    PAGE_LOADS: tl.constexpr, SPLIT_ROWS: tl.constexpr,
):
    head = tl.program_id(0)
    seq = tl.program_id(1)
    # Reversed: the last query blocks have the longest causal rows, so they start first and the tail is short.
    m_block = tl.num_programs(2) - 1 - tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if m_block * BLOCK_M >= q_len:
        return
    context_len = tl.load(context_lens_ptr + seq)
    kv_head = head // QUERIES_PER_KV

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_mask = offs_m < q_len
    q_rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=row_mask[:, None] & d_mask[None, :], other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    q = query_for_cache(q, k_cache_ptr, WIDEN_FP16)
    # The queries are the last q_len positions of the context.
    query_pos = context_len - q_len + offs_m  # [BLOCK_M]
    first_pos = context_len - q_len + m_block * BLOCK_M
    if CAUSAL:
        kv_end = tl.minimum(first_pos + BLOCK_M, context_len)
        # Keys below full_end are visible to every row of the block: no mask needed there.
        full_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N
    else:
        kv_end = context_len
        full_end = (context_len // BLOCK_N) * BLOCK_N

    table_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    kv_head_offset = kv_head * stride_ch
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    if SPLIT_ROWS:
        HALF: tl.constexpr = BLOCK_M // 2
        _prefill_halves(
            q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, table_row_ptr, kv_head_offset, q_start, q_len, context_len,
            m_block, head, full_end, kv_end, qk_scale_log2, stride_qt, stride_qh, stride_ot, stride_oh,
            stride_cb, stride_cs, offs_d, d_mask,
            HALF, BLOCK_M, BLOCK_N, BLOCK_D, PAGE_SIZE, EVEN_D, CAUSAL, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS,
        )
        return
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n_start in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = attend_paged_tile(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset,
            n_start, context_len, query_pos, qk_scale_log2, stride_cb, stride_cs, offs_d, d_mask,
            BLOCK_N, PAGE_SIZE, EVEN_D, False, False, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS,
        )
    for n_start in range(full_end, kv_end, BLOCK_N):
        acc, m_i, l_i = attend_paged_tile(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset,
            n_start, context_len, query_pos, qk_scale_log2, stride_cb, stride_cs, offs_d, d_mask,
            BLOCK_N, PAGE_SIZE, EVEN_D, True, CAUSAL, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS,
        )
    acc = acc / l_i[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & d_mask[None, :],
    )


@triton.jit
def _load_q_rows(q_ptr, q_start, q_len, rows, head, stride_qt, stride_qh, offs_d, d_mask):
    q_rows = (q_start + rows).to(tl.int64)
    return tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=(rows < q_len)[:, None] & d_mask[None, :], other=0.0,
    )


@triton.jit
def _store_rows(out_ptr, acc, l_i, q_start, q_len, rows, head, stride_ot, stride_oh, offs_d, d_mask):
    q_rows = (q_start + rows).to(tl.int64)
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        (acc / l_i[:, None]).to(out_ptr.dtype.element_ty),
        mask=(rows < q_len)[:, None] & d_mask[None, :],
    )


@triton.jit
def _prefill_halves(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, table_row_ptr, kv_head_offset, q_start, q_len, context_len,
    m_block, head, full_end, kv_end, qk_scale_log2, stride_qt, stride_qh, stride_ot, stride_oh,
    stride_cb, stride_cs, offs_d, d_mask,
    HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr,
    EVEN_D: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    PAGE_LOADS: tl.constexpr,
):
    """The query block as two [HALF] row blocks a and b with their own softmax state (SPLIT_ROWS)."""
    rows_a = m_block * BLOCK_M + tl.arange(0, HALF)
    rows_b = rows_a + HALF
    q_a = query_for_cache(_load_q_rows(q_ptr, q_start, q_len, rows_a, head, stride_qt, stride_qh, offs_d, d_mask),
                          k_cache_ptr, WIDEN_FP16)
    q_b = query_for_cache(_load_q_rows(q_ptr, q_start, q_len, rows_b, head, stride_qt, stride_qh, offs_d, d_mask),
                          k_cache_ptr, WIDEN_FP16)
    pos_a = context_len - q_len + rows_a
    pos_b = context_len - q_len + rows_b
    m_a = tl.full([HALF], float("-inf"), dtype=tl.float32)
    l_a = tl.zeros([HALF], dtype=tl.float32)
    acc_a = tl.zeros([HALF, BLOCK_D], dtype=tl.float32)
    m_b = tl.full([HALF], float("-inf"), dtype=tl.float32)
    l_b = tl.zeros([HALF], dtype=tl.float32)
    acc_b = tl.zeros([HALF, BLOCK_D], dtype=tl.float32)
    for n_start in range(0, full_end, BLOCK_N):
        acc_a, m_a, l_a, acc_b, m_b, l_b = attend_paged_tile_halves(
            acc_a, m_a, l_a, q_a, pos_a, acc_b, m_b, l_b, q_b, pos_b,
            k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset, n_start, context_len, qk_scale_log2,
            stride_cb, stride_cs, offs_d, d_mask,
            BLOCK_N, PAGE_SIZE, EVEN_D, False, False, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS,
        )
    for n_start in range(full_end, kv_end, BLOCK_N):
        acc_a, m_a, l_a, acc_b, m_b, l_b = attend_paged_tile_halves(
            acc_a, m_a, l_a, q_a, pos_a, acc_b, m_b, l_b, q_b, pos_b,
            k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset, n_start, context_len, qk_scale_log2,
            stride_cb, stride_cs, offs_d, d_mask,
            BLOCK_N, PAGE_SIZE, EVEN_D, True, CAUSAL, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS,
        )
    _store_rows(out_ptr, acc_a, l_a, q_start, q_len, rows_a, head, stride_ot, stride_oh, offs_d, d_mask)
    _store_rows(out_ptr, acc_b, l_b, q_start, q_len, rows_b, head, stride_ot, stride_oh, offs_d, d_mask)


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
    *,
    config: PrefillConfig | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    checked: bool = False,
) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim]; caches: [num_blocks, block_size, num_kv_heads, head_dim];
    block_tables: [num_seqs, max_blocks] int32; query_start_loc: [num_seqs + 1] int32; context_lens: [num_seqs]
    int32. Returns [num_tokens, num_heads, head_dim] in q's dtype. Without a config, head dims 64 and 128 on
    Hopper run the Gluon kernel (kernels/prefill_gluon.py); a config always selects this module's Triton kernel.
    An FP8 cache holds K / k_scale and V / v_scale; it takes the Triton gather kernel, which widens it in registers
    (k_scale joins the softmax scale, v_scale multiplies the output); other caches ignore the scales.

    checked=True skips the argument checks: only for a caller whose every argument has the shape, strides, dtype and
    device of one this function accepted earlier in the same step. The worker's decoder is that caller
    (services/worker/models/decoder.py, eager and piecewise): its later layers pass the first layer's metadata,
    queries and outputs laid out alike, and caches of the same allocation. Any other caller leaves it False."""
    if checked:
        num_seqs, num_heads = context_lens.shape[0], q.shape[1]
        _, block_size, num_kv_heads, head_dim = key_cache.shape
    else:
        num_seqs, num_heads, num_kv_heads, head_dim, block_size = check_prefill_args(
            q, key_cache, value_cache, block_tables, query_start_loc, context_lens, out
        )
        check_launchable(q.device)
    if key_cache.dtype == FP8_DTYPE:
        out = _paged_prefill(q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale * k_scale,
                             causal, max_query_len, out, config or default_prefill_config(head_dim, block_size),
                             num_seqs, num_heads, num_kv_heads, head_dim, block_size)
        if v_scale != 1.0:
            out.mul_(v_scale)
        return out
    if config is None and q.device.type == "cuda":
        # Hopper: the Gluon kernel (kernels/prefill_gluon.py), which overlaps each warpgroup's softmax with its
        # products where this module's kernel cannot (bench/EXPERIMENTS.md). Decided once per argument signature.
        if hopper_prefill_unsupported_reason(q, key_cache, value_cache) is None:
            return launch_hopper_prefill(q, key_cache, value_cache, block_tables, query_start_loc, context_lens,
                                         scale, causal, max_query_len, out, num_seqs, num_heads, num_kv_heads)
    return _paged_prefill(q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale, causal,
                          max_query_len, out, config or default_prefill_config(head_dim, block_size), num_seqs,
                          num_heads, num_kv_heads, head_dim, block_size)


def _paged_prefill(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_tables: torch.Tensor,
    query_start_loc: torch.Tensor, context_lens: torch.Tensor, scale: float, causal: bool, max_query_len: int | None,
    out: torch.Tensor | None, cfg: PrefillConfig, num_seqs: int, num_heads: int, num_kv_heads: int, head_dim: int,
    block_size: int,
) -> torch.Tensor:
    """paged_prefill_attention's launch of this module's Triton kernels."""
    if out is None:
        out = torch.empty_like(q)
    if q.shape[0] == 0 or num_seqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item())  # one sync
    grid = (num_heads, num_seqs, triton.cdiv(max_query_len, cfg.block_m))
    _prefill_kernel[grid](
        q, key_cache, value_cache, out, block_tables, query_start_loc, context_lens,
        scale * LOG2_E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        QUERIES_PER_KV=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PAGE_SIZE=block_size,
        CAUSAL=bool(causal), DOT_PRECISION=dot_precision(q.dtype),
        INT64_OFFSETS=needs_int64_offsets(key_cache), PAGE_LOADS=resolve_page_loads(cfg.page_loads, q.device),
        SPLIT_ROWS=cfg.split_rows,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


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
    *,
    config: PrefillConfig | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    checked: bool = False,
) -> torch.Tensor:
    """Plain torch version of paged_prefill_attention (same arguments; fp32 math; it checks them whatever
    `checked` says)."""
    num_seqs = check_prefill_args(q, key_cache, value_cache, block_tables, query_start_loc, context_lens, out)[0]
    result = out if out is not None else torch.empty_like(q)
    starts, lens = query_start_loc.tolist(), context_lens.tolist()
    for i in range(num_seqs):
        begin, end = starts[i], starts[i + 1]
        if end - begin > lens[i]:
            raise ValueError(f"sequence {i} has {end - begin} queries but a context of only {lens[i]}")
        if end == begin:
            continue
        k = gather_kv_ref(key_cache, block_tables[i], lens[i], k_scale)
        v = gather_kv_ref(value_cache, block_tables[i], lens[i], v_scale)
        result[begin:end] = attention_ref(q[begin:end], k, v, scale, causal)
    return result
