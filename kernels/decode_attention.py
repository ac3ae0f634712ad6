"""Paged decode attention, one query token per sequence, with split-KV (flash-decoding) and a reduction."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._attention_common import attention_ref, check_paged_attention_args, gather_kv_ref
from kernels._checks import FP8_DTYPE, check_launchable, check_tensor
from kernels._paged_tile import (
    ASM_PAGES,
    LOG2_E,
    WIDEN_FP16,
    attend_paged_tile,
    cache_tile_descriptors,
    dot_precision,
    needs_int64_offsets,
    prefetch_table_row,
    query_for_cache,
    resolve_page_loads,
    supports_tma,
    tma_tile,
)
from kernels.decode_gluon import gluon_decode_available, gluon_decode_unsupported_reason, launch_gluon_decode
from kernels.dependent_launch import gdc_launch_dependents, gdc_wait, supports_pdl
from kernels.launch_memo import register_memo


NUM_SMS_H100 = 132

# Integer arguments that change from step to step. Triton compiles a kernel per value class of each specialised
# integer (1, a multiple of 16, anything else); a class seen for the first time mid-serving stalls the worker for
# the compile, so these are left unspecialised. The partial results' strides follow the step's split count.
_PER_STEP_ARGS = ["split_len", "table_width", "stride_bt", "stride_ps", "stride_ph"]


@dataclass(frozen=True)
class DecodeConfig:
    """Key tile, pipelining and kernel of the split kernel (launch parameters)."""

    block_n: int = 64
    num_warps: int = 4
    # 2 stages with ASM_PAGES keep K/V one tile ahead in 39 KB of shared memory: 4 programs per SM still fit.
    num_stages: int = 2
    # Programs to aim for when choosing num_splits: one full wave at about 4 programs per SM. A few programs past a
    # wave leave most SMs idle while the last ones run.
    target_programs: int = 4 * NUM_SMS_H100
    min_split_len: int = 128
    # With this many (sequence, kv head) programs nearly every SM has one: no split, so no merge kernel.
    no_split_programs: int = 120
    # Whole-tile K/V copies by TMA (Hopper, pages of a multiple of block_n keys): one bulk copy per tile, which
    # keeps the issue cheap. Two buffers (num_stages 3 with the page ids read by inline assembly): one tile in flight
    # while one is used; deeper rings ask for more than HBM serves and the SMs then finish unevenly.
    tma: bool = False
    # The Gluon split kernel (kernels/decode_gluon.py, sm_90 only): a producer warp refills each K and V buffer as
    # soon as its product is done; num_stages is then its ring depth. Elsewhere the Triton kernels run.
    gluon: bool = False
    # The Gluon kernel (and its merge) as programmatic dependent launches (Hopper): scheduled while the previous
    # kernel in the stream still runs, it looks up its pages and fills its ring with older tiles before it waits
    # for that kernel on the device (before q and the newest key), and lets the next kernel be scheduled at once.
    # The launch gap and the first copies leave the critical path. Off: the kernel is launched the ordinary way.
    pdl: bool = False
    # Gluon kernel: at most this many K (and V) copies on their way at once, fewer than its ring has buffers (0: as
    # many as the ring). A ring deeper than the copies in flight holds tiles that landed while the consumer was busy,
    # so the copies keep going while it holds a buffer, and a dependent launch prefetches more before its wait,
    # without asking HBM for more than it serves evenly.
    in_flight: int = 0
    # Gather kernel on an FP8 cache: how its tiles widen (kernels/_paged_tile.py's WIDEN_*). In fp16 a 16-bit q is
    # cast to fp16 too: entries of q past fp16's range (65504) would overflow. The plain fp16 cast timed fastest on
    # the H200 (bench/fp8_attention.py), ahead of widening in registers despite the byte-wise reads of V.
    fp8_widen: int = WIDEN_FP16.value


def uses_tma_tiles(num_seqs: int, num_kv_heads: int, block_size: int, device: torch.device | None) -> bool:
    """Few (sequence, kv head) pairs on a Hopper GPU with pages of a multiple of 64 keys: split into one program per
    SM, each with one TMA tile in flight while it uses another; one bulk copy per tile issues faster than the gather
    kernel's row loads."""
    return (device is not None and device.type == "cuda" and block_size % 64 == 0
            and num_seqs * num_kv_heads < DecodeConfig.no_split_programs and supports_tma(device))


@functools.lru_cache(maxsize=4096)
def default_decode_config(num_seqs: int, num_kv_heads: int, num_splits: int, block_size: int = 16,
                          device: torch.device | None = None) -> DecodeConfig:
    """Per shape, the fastest in A/B runs on the H100 (bench/EXPERIMENTS.md). `device` None: the gather kernels'
    choice (FP8 caches, and any device without the Gluon or TMA kernels).

    * few (sequence, kv head) pairs, split into one program per SM: on Hopper the Gluon kernel with 64-key tiles as a
      dependent launch; on pages of whole 64-key tiles a ring of six with two K and two V copies in flight; on
      smaller pages (a copy per page of a tile, where a cap on copies in flight lost) a ring of three, for up to 16
      pairs (beyond that the gather kernel at four programs per SM leads); elsewhere the Triton TMA kernel, two
      buffers, on pages of 64 keys (uses_tma_tiles);
    * one unsplit program per pair, at most one per SM: on Hopper the Gluon kernel again, a ring of four with two
      copies in flight on 64-key pages and of three on smaller pages; elsewhere 128-key tiles three stages deep (one
      program's 139 KB fill the SM's shared memory);
    * more pairs than SMs: the gather kernel at 4 programs per SM (the Gluon kernel, one program per SM, was slower).

    The worker's default 16-key pages take the ring-of-three branches; `--block-size 64` (or any multiple) takes
    the whole-tile ones.
    """
    pairs = num_seqs * num_kv_heads
    if gluon_decode_available(device):
        whole_tiles = block_size % 64 == 0
        if (pairs < DecodeConfig.no_split_programs and (whole_tiles or pairs <= 16)) or (
                num_splits == 1 and pairs <= NUM_SMS_H100):
            if not whole_tiles:
                return DecodeConfig(block_n=64, num_stages=3, target_programs=NUM_SMS_H100, gluon=True, pdl=True)
            # Two K and two V copies in flight; a deeper ring for split shapes, whose programs are shorter.
            return DecodeConfig(block_n=64, num_stages=4 if num_splits == 1 else 6, in_flight=2,
                                target_programs=NUM_SMS_H100, gluon=True, pdl=True)
    if uses_tma_tiles(num_seqs, num_kv_heads, block_size, device):
        return DecodeConfig(block_n=64, num_stages=3, target_programs=NUM_SMS_H100, tma=True)
    if num_splits == 1 and pairs <= NUM_SMS_H100:
        return DecodeConfig(block_n=128, num_stages=3)
    return DecodeConfig()


register_memo(default_decode_config.cache_clear)  # a function of its arguments and the device's capability


def decode_config_device(key_cache: torch.Tensor) -> torch.device | None:
    """The device argument of default_decode_config for a cache: None for an FP8 cache, which only the gather
    kernels read (so its graphs, mixed steps and eager calls pick the same config, and no variant first compiles
    mid-serving), the cache's device otherwise."""
    return None if key_cache.dtype == FP8_DTYPE else key_cache.device


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_context_len: int, cfg: DecodeConfig) -> int:
    """As many splits as fit in one wave of target_programs, none shorter than min_split_len keys."""
    programs = max(1, num_seqs * num_kv_heads)
    if programs >= cfg.no_split_programs:
        return 1
    wanted = cfg.target_programs // programs
    longest = triton.cdiv(max(max_context_len, 1), cfg.min_split_len)
    return max(1, min(wanted, longest))


@triton.jit
def _load_group_queries(q_ptr, seq, kv_head, stride_qs, stride_qh, offs_d, d_mask,
                        QUERIES_PER_KV: tl.constexpr, BLOCK_G: tl.constexpr):
    """The kv head's query heads as the rows of q [BLOCK_G, D] (rows past the group are zero and never stored),
    with their head indices and row mask [BLOCK_G]."""
    offs_g = tl.arange(0, BLOCK_G)
    heads = kv_head * QUERIES_PER_KV + offs_g
    g_mask = offs_g < QUERIES_PER_KV
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    return q, heads, g_mask


@triton.jit(do_not_specialize=_PER_STEP_ARGS)
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale_log2, split_len, table_width,
    stride_qs, stride_qh, stride_os, stride_oh,
    stride_cb, stride_cs, stride_ch, stride_bt,
    stride_ps, stride_ph, stride_pk,
    QUERIES_PER_KV: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DIRECT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, PAGE_LOADS: tl.constexpr, FP8_WIDEN: tl.constexpr,
):
    # One program per (sequence, kv head, split): the kv head's query heads share every K/V tile it loads.
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    kv_start = split * split_len
    # q and the split's first page ids are requested before the context length arrives, so the first K/V tile
    # waits for two dependent memory round trips (length and page ids, then K/V) instead of three.
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q, heads, g_mask = _load_group_queries(q_ptr, seq, kv_head, stride_qs, stride_qh, offs_d, d_mask,
                                           QUERIES_PER_KV, BLOCK_G)
    q = query_for_cache(q, k_cache_ptr, FP8_WIDEN)
    table_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    prefetch_table_row(table_row_ptr, kv_start // PAGE_SIZE, table_width)
    context_len = tl.load(context_lens_ptr + seq)
    if kv_start >= context_len:
        return  # the reduction ignores splits past the sequence's length
    kv_end = tl.minimum(kv_start + split_len, context_len)

    kv_head_offset = kv_head * stride_ch
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    query_pos = tl.zeros([BLOCK_G], dtype=tl.int32)  # unused: every key of the context is visible
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    full_end = kv_start + ((kv_end - kv_start) // BLOCK_N) * BLOCK_N
    for n_start in range(kv_start, full_end, BLOCK_N):
        acc, m_i, l_i = attend_paged_tile(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset,
            n_start, kv_end, query_pos, qk_scale_log2, stride_cb, stride_cs, offs_d, d_mask,
            BLOCK_N, PAGE_SIZE, EVEN_D, False, False, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS, FP8_WIDEN,
        )
    if full_end < kv_end:
        acc, m_i, l_i = attend_paged_tile(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset,
            full_end, kv_end, query_pos, qk_scale_log2, stride_cb, stride_cs, offs_d, d_mask,
            BLOCK_N, PAGE_SIZE, EVEN_D, True, False, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS, FP8_WIDEN,
        )
    acc = acc / l_i[:, None]
    store_mask = g_mask[:, None] & d_mask[None, :]
    if DIRECT:
        tl.store(
            out_ptr + seq.to(tl.int64) * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
            acc.to(out_ptr.dtype.element_ty), mask=store_mask,
        )
    else:
        part = seq.to(tl.int64) * stride_ps + heads * stride_ph + split * stride_pk  # [BLOCK_G]
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=store_mask)
        # Log-sum-exp of the split's scores, in log2 units.
        tl.store(part_lse_ptr + part, m_i + tl.math.log2(l_i), mask=g_mask)


@triton.jit(do_not_specialize=_PER_STEP_ARGS)
def _decode_split_tma_kernel(
    q_ptr, k_desc, v_desc, block_tables_ptr, context_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale_log2, split_len, table_width,
    stride_qs, stride_qh, stride_os, stride_oh, stride_bt,
    stride_ps, stride_ph, stride_pk,
    QUERIES_PER_KV: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DIRECT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PAGE_LOADS: tl.constexpr,
):
    """_decode_split_kernel with each [BLOCK_N, HEAD_DIM] K/V tile copied whole by TMA from one page of the cache
    viewed as [num_blocks * PAGE_SIZE, num_kv_heads * HEAD_DIM] (PAGE_SIZE % BLOCK_N == 0)."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    kv_start = split * split_len
    # As in _decode_split_kernel: q and the first page ids are on their way while the context length arrives.
    offs_d = tl.arange(0, HEAD_DIM)
    q, heads, g_mask = _load_group_queries(q_ptr, seq, kv_head, stride_qs, stride_qh, offs_d, offs_d < HEAD_DIM,
                                           QUERIES_PER_KV, BLOCK_G)
    table_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    prefetch_table_row(table_row_ptr, kv_start // PAGE_SIZE, table_width)
    context_len = tl.load(context_lens_ptr + seq)
    if kv_start >= context_len:
        return  # the reduction ignores splits past the sequence's length
    kv_end = tl.minimum(kv_start + split_len, context_len)
    kv_col = kv_head * HEAD_DIM
    query_pos = tl.zeros([BLOCK_G], dtype=tl.int32)  # unused: every key of the context is visible
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    full_end = kv_start + ((kv_end - kv_start) // BLOCK_N) * BLOCK_N
    for n_start in range(kv_start, full_end, BLOCK_N):
        acc, m_i, l_i = tma_tile(acc, m_i, l_i, q, k_desc, v_desc, table_row_ptr, n_start, kv_col, kv_end,
                                  query_pos, qk_scale_log2, BLOCK_N, PAGE_SIZE, False, False, DOT_PRECISION,
                                  PAGE_LOADS == 2)
    if full_end < kv_end:
        acc, m_i, l_i = tma_tile(acc, m_i, l_i, q, k_desc, v_desc, table_row_ptr, full_end, kv_col, kv_end,
                                  query_pos, qk_scale_log2, BLOCK_N, PAGE_SIZE, True, False, DOT_PRECISION,
                                  PAGE_LOADS == 2)
    acc = acc / l_i[:, None]
    if DIRECT:
        tl.store(out_ptr + seq.to(tl.int64) * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])
    else:
        part = seq.to(tl.int64) * stride_ps + heads * stride_ph + split * stride_pk  # [BLOCK_G]
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=g_mask[:, None])
        tl.store(part_lse_ptr + part, m_i + tl.math.log2(l_i), mask=g_mask)


@triton.jit(do_not_specialize=["split_len", "num_splits"])
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, context_lens_ptr, out_ptr,
    split_len, num_splits,
    stride_ps, stride_ph, stride_pk, stride_os, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SPLITS: tl.constexpr, USE_GDC: tl.constexpr,
):
    if USE_GDC:
        gdc_launch_dependents()  # a dependent launch after the merge may be scheduled now
        gdc_wait()  # the split kernel's results are complete and visible past this point
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    # The length, the log-sum-exps and the parts are loaded side by side (one memory round trip, not three);
    # splits past the sequence's length were never written, so they are dropped by selection, not by a zero
    # weight (whatever those slots hold, NaN included, stays out of the sums).
    offs_k = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    in_range = offs_k < num_splits
    part = seq * stride_ps + head * stride_ph + offs_k * stride_pk  # [BLOCK_SPLITS]
    context_len = tl.load(context_lens_ptr + seq)
    lse = tl.load(part_lse_ptr + part, mask=in_range, other=float("-inf"))
    parts = tl.load(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], mask=in_range[:, None] & d_mask[None, :],
                    other=0.0)  # [BLOCK_SPLITS, BLOCK_D]
    valid = offs_k < tl.minimum((context_len + split_len - 1) // split_len, num_splits)
    lse = tl.where(valid, lse, float("-inf"))
    weights = tl.where(valid, tl.math.exp2(lse - tl.max(lse, axis=0)), 0.0)
    parts = tl.where(valid[:, None], parts, 0.0)
    result = tl.sum(parts * weights[:, None], axis=0) / tl.sum(weights, axis=0)
    tl.store(out_ptr + seq * stride_os + head * stride_oh + offs_d, result.to(out_ptr.dtype.element_ty), mask=d_mask)


def launch_decode_reduce(
    part_out: torch.Tensor, part_lse: torch.Tensor, context_lens: torch.Tensor, out: torch.Tensor, split_len: int,
    pdl: bool = False,
) -> None:
    """Merges split results part_out [num_seqs, num_heads, num_splits, head_dim] and part_lse [num_seqs, num_heads,
    num_splits] (fp32, log2 units) into out [num_seqs, num_heads, head_dim]."""
    num_seqs, num_heads, num_splits, head_dim = part_out.shape
    _decode_reduce_kernel[(num_seqs, num_heads)](
        part_out, part_lse, context_lens, out, split_len, num_splits,
        num_heads * num_splits, num_splits, 1, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_SPLITS=triton.next_power_of_2(num_splits),
        USE_GDC=pdl, num_warps=4, **({"launch_pdl": True} if pdl else {}),
    )


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
    dims = check_paged_attention_args(q, key_cache, value_cache, block_tables, num_seqs, out,
                                      context_lens=context_lens)
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
    *,
    config: DecodeConfig | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    checked: bool = False,
) -> torch.Tensor:
    """q: [num_seqs, num_heads, head_dim] at position context_lens[i] - 1; caches: [num_blocks, block_size,
    num_kv_heads, head_dim]; block_tables: [num_seqs, max_blocks] int32; context_lens: [num_seqs] int32.
    With max_context_len and num_splits given the call never syncs (CUDA-graph safe). An FP8 cache holds K / k_scale
    and V / v_scale (the scales are ignored for other caches). checked=True skips the argument checks, on the terms
    of kernels.prefill_attention.paged_prefill_attention's `checked`."""
    if checked:
        num_seqs = context_lens.shape[0]
    else:
        num_seqs = _check_args(q, key_cache, value_cache, block_tables, context_lens, out)[0]
        check_launchable(q.device)
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if key_cache.dtype == FP8_DTYPE:
        # The Gluon and TMA kernels multiply tiles as they land; the gather kernel widens FP8 in registers. k_scale
        # joins the softmax scale, v_scale multiplies the output.
        _paged_decode(q, key_cache, value_cache, block_tables, context_lens, scale * k_scale, max_context_len,
                      num_splits, out, config, decode_config_device(key_cache))
        if v_scale != 1.0:
            out.mul_(v_scale)
        return out
    return _paged_decode(q, key_cache, value_cache, block_tables, context_lens, scale, max_context_len, num_splits,
                         out, config, decode_config_device(key_cache))


def _paged_decode(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, max_context_len: int | None, num_splits: int | None, out: torch.Tensor,
    config: DecodeConfig | None, device: torch.device | None,
) -> torch.Tensor:
    """paged_decode_attention's launch into out; `device` picks the default config (None: the gather kernel's)."""
    num_seqs, num_heads = q.shape[0], q.shape[1]
    num_kv_heads, head_dim, block_size = key_cache.shape[2], key_cache.shape[3], key_cache.shape[1]
    if max_context_len is None:
        max_context_len = int(context_lens.max().item())  # one sync; pass it to stay graph-safe
    if num_splits is None:
        split_cfg = config or default_decode_config(num_seqs, num_kv_heads, 0, block_size, device)
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_context_len, split_cfg)
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    cfg = config or default_decode_config(num_seqs, num_kv_heads, num_splits, block_size, device)
    if cfg.in_flight < 0:
        raise ValueError(f"DecodeConfig.in_flight must be >= 0 (0: as many as the ring), got {cfg.in_flight}")
    # Each split covers a whole number of key tiles; sequences longer than max_context_len would be truncated.
    split_len = triton.cdiv(triton.cdiv(max(max_context_len, 1), num_splits), cfg.block_n) * cfg.block_n
    group = num_heads // num_kv_heads
    block_d = triton.next_power_of_2(head_dim)
    direct = num_splits == 1
    page_loads = resolve_page_loads(ASM_PAGES, q.device)
    if direct:
        part_out, part_lse = out, out  # unused
    else:
        # [num_seqs, num_heads, num_splits, head_dim] and [num_seqs, num_heads, num_splits], fp32.
        part_out = torch.empty((num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=q.device)
    if cfg.gluon and gluon_decode_unsupported_reason(q, key_cache, value_cache, cfg.block_n) is None:
        dependent = supports_pdl(cfg.pdl, q.device)
        launch_gluon_decode(q, key_cache, value_cache, block_tables, context_lens, out, part_out, part_lse,
                            scale * LOG2_E, split_len, num_splits, cfg.block_n, cfg.num_stages, dependent,
                            cfg.in_flight)
        if not direct:
            launch_decode_reduce(part_out, part_lse, context_lens, out, split_len, dependent)
        return out
    descriptors = None
    if cfg.tma and supports_tma(q.device):
        descriptors = cache_tile_descriptors(key_cache, value_cache, cfg.block_n)
    if descriptors is not None:
        _decode_split_tma_kernel[(num_seqs, num_kv_heads, num_splits)](
            q, *descriptors, block_tables, context_lens, out, part_out, part_lse,
            scale * LOG2_E, split_len, block_tables.shape[1],
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
            num_heads * num_splits, num_splits, 1,
            QUERIES_PER_KV=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
            BLOCK_N=cfg.block_n, PAGE_SIZE=block_size, DIRECT=direct, DOT_PRECISION=dot_precision(q.dtype),
            PAGE_LOADS=page_loads, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if not direct:
            launch_decode_reduce(part_out, part_lse, context_lens, out, split_len)
        return out
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, key_cache, value_cache, block_tables, context_lens, out, part_out, part_lse,
        scale * LOG2_E, split_len, block_tables.shape[1],
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        num_heads * num_splits, num_splits, 1,
        QUERIES_PER_KV=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_N=cfg.block_n, PAGE_SIZE=block_size, DIRECT=direct, DOT_PRECISION=dot_precision(q.dtype),
        INT64_OFFSETS=needs_int64_offsets(key_cache), PAGE_LOADS=page_loads, FP8_WIDEN=cfg.fp8_widen,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if not direct:
        launch_decode_reduce(part_out, part_lse, context_lens, out, split_len)
    return out


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
    *,
    config: DecodeConfig | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    checked: bool = False,
) -> torch.Tensor:
    """Plain torch version of paged_decode_attention (same arguments; fp32 math; it checks them whatever `checked`
    says)."""
    num_seqs = _check_args(q, key_cache, value_cache, block_tables, context_lens, out)[0]
    result = out if out is not None else torch.empty_like(q)
    for i, length in enumerate(context_lens.tolist()):
        if length < 1:
            raise ValueError(f"sequence {i} has context length {length}; decode needs at least 1")
        k = gather_kv_ref(key_cache, block_tables[i], length, k_scale)
        v = gather_kv_ref(value_cache, block_tables[i], length, v_scale)
        result[i : i + 1] = attention_ref(q[i : i + 1], k, v, scale, causal=True)
    return result
