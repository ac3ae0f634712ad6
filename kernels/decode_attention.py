"""Paged decode attention, one query token per sequence, with split-KV (flash-decoding) merged by the last split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._attention_common import attention_ref, check_paged_attention_args, gather_kv_ref
from kernels._checks import check_launchable, check_same_device, check_tensor
from kernels._paged_tile import (
    ASM_PAGES,
    LOG2_E,
    attend_paged_tile,
    cache_tile_descriptors,
    dot_precision,
    needs_int64_offsets,
    resolve_page_loads,
    supports_tma,
    tma_tile,
)

NUM_SMS_H100 = 132


@dataclass(frozen=True)
class DecodeConfig:
    """Key tile and pipelining of the split kernel (launch parameters)."""

    block_n: int = 64
    num_warps: int = 4
    # 2 stages with ASM_PAGES keep K/V one tile ahead in 39 KB of shared memory: 4 programs per SM still fit.
    num_stages: int = 2
    # Programs to aim for when choosing num_splits: one full wave at about 4 programs per SM (measured on the
    # H100: a few programs past a wave, e.g. 576 instead of 512, cost 18% at 8 x 32k).
    target_programs: int = 4 * NUM_SMS_H100
    min_split_len: int = 128
    page_loads: int = ASM_PAGES  # kernels/_paged_tile.py: how a tile looks up its pages
    # With this many (sequence, kv head) programs nearly every SM has one: no split (the merge costs ~3 us).
    no_split_programs: int = 120
    # Whole-tile K/V copies by TMA (Hopper, pages of a multiple of block_n keys): one bulk copy per tile, which
    # lets one program per SM keep six tiles in flight (kernels/NOTES.md, v4).
    tma: bool = False


def uses_tma_tiles(num_seqs: int, num_kv_heads: int, block_size: int, device: torch.device | None) -> bool:
    """Few (sequence, kv head) pairs on a Hopper GPU with pages of a multiple of 64 keys: split into one program per
    SM, each keeping six TMA tiles in flight (1 x 32k: 2.49 TB/s against 2.42 for the gather kernel, same run)."""
    return (device is not None and device.type == "cuda" and block_size % 64 == 0
            and num_seqs * num_kv_heads < DecodeConfig.no_split_programs and supports_tma(device))


def default_decode_config(num_seqs: int, num_kv_heads: int, num_splits: int, block_size: int = 16,
                          device: torch.device | None = None) -> DecodeConfig:
    """One unsplit program per SM at most: 128-key tiles three stages deep (one program's 139 KB fill the SM's
    shared memory; 16 x 4k: 2.71 TB/s against 2.65 with 64-key tiles). Otherwise the 4-programs-per-SM default;
    with TMA tiles (uses_tma_tiles) one program per SM, six 64-key tiles deep."""
    if uses_tma_tiles(num_seqs, num_kv_heads, block_size, device):
        return DecodeConfig(block_n=64, num_stages=6, target_programs=NUM_SMS_H100, tma=True)
    if num_splits == 1 and num_seqs * num_kv_heads <= NUM_SMS_H100:
        return DecodeConfig(block_n=128, num_stages=3)
    return DecodeConfig()


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


@triton.jit
def _finish_split(
    acc, m_i, l_i, heads, g_mask, offs_d, d_mask, seq, kv_head, split, context_len, split_len, num_splits,
    out_ptr, part_out_ptr, part_lse_ptr, done_ptr, stride_os, stride_oh, stride_ps, stride_ph,
    QUERIES_PER_KV: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr, MERGE_SPLITS: tl.constexpr, DIRECT: tl.constexpr,
):
    """Writes a split's result. The last split of a (sequence, kv head) to finish merges every split into out.

    acc [BLOCK_G, BLOCK_D], m_i and l_i [BLOCK_G] are the split's online-softmax state for the group's query heads.
    Splits store their normalised output and log-sum-exp (log2 units) in the workspace, then count themselves in
    done_ptr[seq, kv_head]; the program that brings the count to the number of splits holding keys reads them back,
    merges, and resets the count to zero for the next launch. No second kernel: at 1 x 32k the merge kernel cost
    2.7-3.3 us of 54-56 us (kernels/NOTES.md)."""
    store_mask = g_mask[:, None] & d_mask[None, :]
    num_valid = tl.minimum(tl.cdiv(context_len, split_len), num_splits)
    if DIRECT or num_valid == 1:
        tl.store(out_ptr + seq.to(tl.int64) * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
                 (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=store_mask)
        return
    part = seq.to(tl.int64) * stride_ps + heads * stride_ph + split  # [BLOCK_G]
    tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc / l_i[:, None], mask=store_mask)
    tl.store(part_lse_ptr + part, m_i + tl.math.log2(l_i), mask=g_mask)
    # Every thread's stores precede the one counting atomic (release); its acquire orders the merge's loads after
    # the other splits' stores, and the loads skip L1 (.cg), which is not coherent across SMs.
    tl.debug_barrier()
    counter = done_ptr + seq * tl.num_programs(1) + kv_head
    if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == num_valid - 1:
        offs_g = tl.arange(0, GROUP_P2)
        g_ok = offs_g < QUERIES_PER_KV
        group_heads = kv_head * QUERIES_PER_KV + offs_g
        base = seq.to(tl.int64) * stride_ps + group_heads * stride_ph  # [GROUP_P2]
        offs_k = tl.arange(0, BLOCK_SPLITS)
        lse = tl.load(part_lse_ptr + base[:, None] + offs_k[None, :],
                      mask=g_ok[:, None] & (offs_k < num_valid)[None, :], other=float("-inf"),
                      cache_modifier=".cg")  # [GROUP_P2, BLOCK_SPLITS]
        lse_max = tl.where(g_ok, tl.max(lse, axis=1), 0.0)
        total = tl.sum(tl.math.exp2(lse - lse_max[:, None]), axis=1)  # [GROUP_P2]
        merged = tl.zeros([GROUP_P2, BLOCK_D], dtype=tl.float32)
        # MERGE_SPLITS splits of every head per step: [GROUP_P2, MERGE_SPLITS, BLOCK_D] is 64 registers a thread.
        for k0 in range(0, num_valid, MERGE_SPLITS):
            ks = k0 + tl.arange(0, MERGE_SPLITS)
            ok = g_ok[:, None] & (ks < num_valid)[None, :]  # [GROUP_P2, MERGE_SPLITS]
            rows = base[:, None] + ks[None, :]
            weight = tl.math.exp2(tl.load(part_lse_ptr + rows, mask=ok, other=float("-inf"), cache_modifier=".cg")
                                  - lse_max[:, None])
            parts = tl.load(part_out_ptr + rows[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                            mask=ok[:, :, None] & d_mask[None, None, :], other=0.0, cache_modifier=".cg")
            merged += tl.sum(parts * weight[:, :, None], axis=1)
        tl.store(out_ptr + seq.to(tl.int64) * stride_os + group_heads[:, None] * stride_oh + offs_d[None, :],
                 (merged / total[:, None]).to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_mask[None, :])
        tl.atomic_xchg(counter, 0)


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    done_ptr, qk_scale_log2, split_len, num_splits,
    stride_qs, stride_qh, stride_os, stride_oh,
    stride_cb, stride_cs, stride_ch, stride_bt,
    stride_ps, stride_ph,
    QUERIES_PER_KV: tl.constexpr, BLOCK_G: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DIRECT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INT64_OFFSETS: tl.constexpr, PAGE_LOADS: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr, MERGE_SPLITS: tl.constexpr,
):
    # One program per (sequence, kv head, split): the kv head's query heads share every K/V tile it loads.
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    kv_start = split * split_len
    if kv_start >= context_len:
        return  # no keys here: the merge counts only splits that hold keys
    kv_end = tl.minimum(kv_start + split_len, context_len)

    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q, heads, g_mask = _load_group_queries(q_ptr, seq, kv_head, stride_qs, stride_qh, offs_d, d_mask,
                                           QUERIES_PER_KV, BLOCK_G)
    table_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
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
            BLOCK_N, PAGE_SIZE, EVEN_D, False, False, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS,
        )
    if full_end < kv_end:
        acc, m_i, l_i = attend_paged_tile(
            acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset,
            full_end, kv_end, query_pos, qk_scale_log2, stride_cb, stride_cs, offs_d, d_mask,
            BLOCK_N, PAGE_SIZE, EVEN_D, True, False, DOT_PRECISION, INT64_OFFSETS, PAGE_LOADS,
        )
    _finish_split(acc, m_i, l_i, heads, g_mask, offs_d, d_mask, seq, kv_head, split, context_len, split_len,
                  num_splits, out_ptr, part_out_ptr, part_lse_ptr, done_ptr, stride_os, stride_oh, stride_ps,
                  stride_ph, QUERIES_PER_KV, GROUP_P2, HEAD_DIM, BLOCK_D, BLOCK_SPLITS, MERGE_SPLITS, DIRECT)


@triton.jit
def _decode_split_tma_kernel(
    q_ptr, k_desc, v_desc, block_tables_ptr, context_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    done_ptr, qk_scale_log2, split_len, num_splits,
    stride_qs, stride_qh, stride_os, stride_oh, stride_bt,
    stride_ps, stride_ph,
    QUERIES_PER_KV: tl.constexpr, BLOCK_G: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, DIRECT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr, MERGE_SPLITS: tl.constexpr,
):
    """_decode_split_kernel with each [BLOCK_N, HEAD_DIM] K/V tile copied whole by TMA from one page of the cache
    viewed as [num_blocks * PAGE_SIZE, num_kv_heads * HEAD_DIM] (PAGE_SIZE % BLOCK_N == 0)."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    kv_start = split * split_len
    if kv_start >= context_len:
        return  # no keys here: the merge counts only splits that hold keys
    kv_end = tl.minimum(kv_start + split_len, context_len)
    offs_d = tl.arange(0, HEAD_DIM)
    d_mask = offs_d < HEAD_DIM
    q, heads, g_mask = _load_group_queries(q_ptr, seq, kv_head, stride_qs, stride_qh, offs_d, d_mask,
                                           QUERIES_PER_KV, BLOCK_G)
    table_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    kv_col = kv_head * HEAD_DIM
    query_pos = tl.zeros([BLOCK_G], dtype=tl.int32)  # unused: every key of the context is visible
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    full_end = kv_start + ((kv_end - kv_start) // BLOCK_N) * BLOCK_N
    for n_start in range(kv_start, full_end, BLOCK_N):
        acc, m_i, l_i = tma_tile(acc, m_i, l_i, q, k_desc, v_desc, table_row_ptr, n_start, kv_col, kv_end,
                                  query_pos, qk_scale_log2, BLOCK_N, PAGE_SIZE, False, False, DOT_PRECISION)
    if full_end < kv_end:
        acc, m_i, l_i = tma_tile(acc, m_i, l_i, q, k_desc, v_desc, table_row_ptr, full_end, kv_col, kv_end,
                                  query_pos, qk_scale_log2, BLOCK_N, PAGE_SIZE, True, False, DOT_PRECISION)
    _finish_split(acc, m_i, l_i, heads, g_mask, offs_d, d_mask, seq, kv_head, split, context_len, split_len,
                  num_splits, out_ptr, part_out_ptr, part_lse_ptr, done_ptr, stride_os, stride_oh, stride_ps,
                  stride_ph, QUERIES_PER_KV, GROUP_P2, HEAD_DIM, HEAD_DIM, BLOCK_SPLITS, MERGE_SPLITS, DIRECT)


@dataclass(frozen=True)
class DecodeWorkspace:
    """Scratch of split launches, allocated once by the caller so a CUDA graph replays without allocating.

    part_out [max_seqs, num_heads, max_splits, head_dim] and part_lse [max_seqs, num_heads, max_splits] (fp32)
    hold each split's result; done [max_seqs, num_kv_heads] int32 counts finished splits and is zero between
    launches (the merging program resets it). One workspace serves every layer: launches on one stream run in turn.
    """

    part_out: torch.Tensor
    part_lse: torch.Tensor
    done: torch.Tensor

    @classmethod
    def allocate(cls, max_seqs: int, num_heads: int, num_kv_heads: int, head_dim: int, max_splits: int,
                 device: torch.device | str) -> "DecodeWorkspace":
        return cls(
            part_out=torch.empty((max_seqs, num_heads, max_splits, head_dim), dtype=torch.float32, device=device),
            part_lse=torch.empty((max_seqs, num_heads, max_splits), dtype=torch.float32, device=device),
            done=torch.zeros((max_seqs, num_kv_heads), dtype=torch.int32, device=device),
        )

    def check(self, num_seqs: int, num_heads: int, num_kv_heads: int, head_dim: int, num_splits: int,
              device: torch.device) -> None:
        max_seqs, heads, max_splits, dim = self.part_out.shape
        if (heads, dim, self.done.shape[1]) != (num_heads, head_dim, num_kv_heads):
            raise ValueError(f"decode workspace is for {heads} heads, {self.done.shape[1]} kv heads, head_dim {dim}; "
                             f"the call has {num_heads}, {num_kv_heads}, {head_dim}")
        if num_seqs > max_seqs or num_splits > max_splits:
            raise ValueError(f"decode workspace holds {max_seqs} sequences x {max_splits} splits; the call needs "
                             f"{num_seqs} x {num_splits}")
        if self.part_out.device != device:
            raise ValueError(f"decode workspace is on {self.part_out.device}, the call on {device}")


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
    *,
    config: DecodeConfig | None = None,
    workspace: DecodeWorkspace | None = None,
) -> torch.Tensor:
    """q: [num_seqs, num_heads, head_dim] at position context_lens[i] - 1; caches: [num_blocks, block_size,
    num_kv_heads, head_dim]; block_tables: [num_seqs, max_blocks] int32; context_lens: [num_seqs] int32.
    With max_context_len and num_splits given the call never syncs (CUDA-graph safe); a split launch without a
    workspace allocates one (a zero fill per call)."""
    num_seqs, num_heads, num_kv_heads, head_dim, block_size = _check_args(
        q, key_cache, value_cache, block_tables, context_lens, out
    )
    check_launchable(q.device)
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if max_context_len is None:
        max_context_len = int(context_lens.max().item())  # one sync; pass it to stay graph-safe
    if num_splits is None:
        split_cfg = config or default_decode_config(num_seqs, num_kv_heads, 0, block_size, q.device)
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_context_len, split_cfg)
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    cfg = config or default_decode_config(num_seqs, num_kv_heads, num_splits, block_size, q.device)
    # Each split covers a whole number of key tiles; sequences longer than max_context_len would be truncated.
    split_len = triton.cdiv(triton.cdiv(max(max_context_len, 1), num_splits), cfg.block_n) * cfg.block_n
    group = num_heads // num_kv_heads
    block_d = triton.next_power_of_2(head_dim)
    direct = num_splits == 1
    if direct:
        part_out, part_lse, done = out, out, context_lens  # unused
    else:
        if workspace is None:
            workspace = DecodeWorkspace.allocate(num_seqs, num_heads, num_kv_heads, head_dim, num_splits, q.device)
        workspace.check(num_seqs, num_heads, num_kv_heads, head_dim, num_splits, q.device)
        part_out, part_lse, done = workspace.part_out, workspace.part_lse, workspace.done
    group_p2 = triton.next_power_of_2(group)
    common = dict(
        QUERIES_PER_KV=group, BLOCK_G=max(16, group_p2), GROUP_P2=group_p2, HEAD_DIM=head_dim,
        BLOCK_N=cfg.block_n, PAGE_SIZE=block_size, DIRECT=direct, DOT_PRECISION=dot_precision(q.dtype),
        BLOCK_SPLITS=triton.next_power_of_2(num_splits), MERGE_SPLITS=max(1, 64 // group_p2),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    grid = (num_seqs, num_kv_heads, num_splits)
    descriptors = None
    if cfg.tma and supports_tma(q.device):
        descriptors = cache_tile_descriptors(key_cache, value_cache, cfg.block_n)
    if descriptors is not None:
        _decode_split_tma_kernel[grid](
            q, *descriptors, block_tables, context_lens, out, part_out, part_lse, done,
            scale * LOG2_E, split_len, num_splits,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
            part_lse.stride(0), part_lse.stride(1) if not direct else 1,
            **common,
        )
        return out
    _decode_split_kernel[grid](
        q, key_cache, value_cache, block_tables, context_lens, out, part_out, part_lse, done,
        scale * LOG2_E, split_len, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        part_lse.stride(0), part_lse.stride(1) if not direct else 1,
        BLOCK_D=block_d, INT64_OFFSETS=needs_int64_offsets(key_cache),
        PAGE_LOADS=resolve_page_loads(cfg.page_loads, q.device), **common,
    )
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
    workspace: DecodeWorkspace | None = None,
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
