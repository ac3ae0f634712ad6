"""Paged prefill flash attention for Hopper (sm_90) written in Gluon, Triton's explicit-layout dialect.

Same semantics as kernels.prefill_attention.paged_prefill_attention (packed variable-length queries that are the last
positions of their context, paged K/V, GQA, causal or encoder mode); FA3's structure written by hand:

* one program per (query head, sequence, 128-row query block), the heaviest (last) query blocks launched first;
  8 warps = two warpgroups of 64 query rows each, sharing the K/V tiles in shared memory;
* K/V tiles arrive by TMA from the cache viewed as [num_blocks * block_size, num_kv_heads * head_dim], one copy per
  page run of min(block_size, BLOCK_N) rows into consecutive rows of a ring of STAGES shared buffers, each buffer
  with its own mbarrier (K and V apart, so a score product can start before its V tile lands);
* the wgmma products are asynchronous and waited on explicitly: in step j the score product S_j = Q K_j^T and the
  product O += P_{j-1} V_{j-1} are issued back to back, then the warpgroup waits for S_j only, and the softmax of
  S_j runs while P_{j-1} V_{j-1} is still on the tensor cores (FA3's intra-warpgroup pipelining). Triton's own
  pipeliner waits for every score product before the softmax (kernels/NOTES.md), which is what this kernel is for;
* tiles below the causal diagonal run without mask arithmetic; only the diagonal / last tiles apply masks;
* by default a ninth warp (gl.warp_specialize) issues every TMA copy, paced by empty/ready mbarrier pairs, so
  the consumer warpgroups never stop for a copy or the CTA barriers Triton places before each one.

That kernel is the "cooperative" schedule: both warpgroups in one 8-warp partition, which meet at every barrier and
run in step. The default schedules live in kernels/prefill_gluon_pingpong.py: a partition per warpgroup (optionally
taking turns to issue their products, FA3's ping-pong) and one persistent program per SM walking the query blocks
heaviest first, so a block's start overlaps the previous block's end (HopperPrefillConfig.schedule, .persistent).

kernels.prefill_attention.paged_prefill_attention runs the Gluon kernels for head dims 64 and 128 on sm_90 when no
config is given (d128 causal on the H100, 16-key pages: 542 / 599 / 603 TFLOP/s at 4k / 8k / 16k against cuDNN's
532 / 576 / 588 and 422 / 455 / 478 for the Triton kernel in the same run, bench/results/kernels_h100.md).

Triton 3.6's Gluon API (the H100 machine's version) is the target. The module imports without Gluon (CPU CI,
other Triton versions): `supports_hopper_prefill` then returns False and the launcher raises a RuntimeError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels._paged_tile import LOG2_E
from kernels.prefill_attention import _check_args

try:  # Gluon's Hopper API as of Triton 3.6; any import failure leaves the kernel unavailable, not the module.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor

    GLUON_IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError or anything a changed API raises
    gluon = None
    GLUON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

BLOCK_M = 128  # query rows per program: two 64-row warpgroups
NUM_WARPS = 8  # the two consumer warpgroups
SUPPORTED_HEAD_DIMS = (64, 128)
SCHEDULES = ("cooperative", "independent", "pingpong")


@dataclass(frozen=True)
class HopperPrefillConfig:
    """Key tile and K/V ring depth of the Gluon prefill kernel.

    block_n: keys per tile (64 or 128). stages: K/V buffers in the ring (2-4); K tiles are copied stages - 1 tiles
    ahead of their score product, V tiles stages - 2 tiles ahead of the step that issues their P V product.
    warp_specialize: a 1-warp TMA producer partition (gl.warp_specialize) beside the 8 consumer warps, with
    empty/ready mbarrier pairs per stage. On by default: the fastest variant on the H100 (d128 causal 16k: 510
    TFLOP/s on 64-key pages against 484 without it, bench/results/kernels_gluon_check_h100.json). Unlike Triton
    3.6's automatic warp specialisation (kernels/ws_probe.py deadlocks), the partitions written here run.
    """

    block_n: int = 128
    stages: int = 2
    warp_specialize: bool = True
    # "cooperative": both warpgroups in one 8-warp partition, in step (this module's kernel). "independent": each
    # warpgroup its own partition (kernels/prefill_gluon_pingpong.py); "pingpong": those partitions taking turns to
    # issue their products (FA3's schedule), so one's softmax runs under the other's products.
    schedule: str = "independent"
    # One program per SM walking the work items heaviest first (independent and pingpong schedules only).
    persistent: bool = True

    def __post_init__(self) -> None:
        if self.block_n not in (64, 128):
            raise ValueError(f"block_n must be 64 or 128, got {self.block_n}")
        if not 2 <= self.stages <= 4:
            raise ValueError(f"stages must be between 2 and 4, got {self.stages}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule != "cooperative" and not self.warp_specialize:
            raise ValueError(f"the {self.schedule} schedule needs warp_specialize (its producer warp)")
        if self.persistent and self.schedule == "cooperative":
            raise ValueError("persistent needs the independent or pingpong schedule (pass persistent=False)")

    @property
    def pingpong(self) -> bool:
        return self.schedule == "pingpong"

    def shared_bytes(self, head_dim: int, element_size: int = 2) -> int:
        """Shared memory of the explicit buffers: Q, and K and V rings (barriers and scratch not counted)."""
        return element_size * head_dim * (BLOCK_M + 2 * self.stages * self.block_n)


def default_hopper_prefill_config(head_dim: int, block_size: int) -> HopperPrefillConfig:
    """FA3's tile (128 x 128, two stages), the producer warp, a partition per warpgroup, one program per SM; at
    head_dim 64 the warpgroups also take turns (ping-pong). The fastest on the H100 in two runs of kernels.bench
    (kernels/NOTES.md, v7): at d128 independent warpgroups lead ping-pong at 8k-16k, at d64 ping-pong leads,
    most at short sequences on 64-key pages (275 against 245 TFLOP/s at 1k)."""
    if head_dim == 64:
        return HopperPrefillConfig(schedule="pingpong")
    return HopperPrefillConfig()


SMEM_LIMIT = 227 * 1024  # bytes of shared memory one H100 program may use


# ---------------------------------------------------------------------------------------------------------------
# Kernels (defined only where Gluon imports; compiled on first launch).
# ---------------------------------------------------------------------------------------------------------------

if gluon is not None:

    @gluon.jit
    def _copy_kv_tile(desc, dst, bar, table_row_ptr, tile, last_page, kv_col, pred,
                      BLOCK_N: gl.constexpr, BOX_ROWS: gl.constexpr, PAGE_SIZE: gl.constexpr):
        """TMA copies of keys tile * BLOCK_N .. + BLOCK_N of one kv head into dst ([BLOCK_N, D] shared), signalling
        bar. One copy per run of BOX_ROWS = min(PAGE_SIZE, BLOCK_N) keys, each from its own page. Pages past the
        context are not looked up: their copies reread the last page, whose rows the masked tile ignores (scores)
        or zeroes (V, in the epilogue)."""
        mbarrier.expect(bar, BLOCK_N * desc.block_type.shape[1] * desc.dtype.primitive_bitwidth // 8, pred=pred)
        for c in gl.static_range(BLOCK_N // BOX_ROWS):
            key = tile * BLOCK_N + c * BOX_ROWS
            page = gl.load(table_row_ptr + gl.minimum(key // PAGE_SIZE, last_page))
            tma.async_copy_global_to_shared(desc, [page * PAGE_SIZE + key % PAGE_SIZE, kv_col], bar,
                                            dst.slice(c * BOX_ROWS, BOX_ROWS), pred=pred)

    @gluon.jit
    def _refill(j, n_tiles, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, table_row_ptr, last_page, kv_col,
                BLOCK_N: gl.constexpr, BOX_ROWS: gl.constexpr, PAGE_SIZE: gl.constexpr, STAGES: gl.constexpr):
        """Copies issued by the consumers themselves (no producer warp), in step j once its products are issued:
        K of tile j + STAGES - 1 into the buffer of K_{j-1}, V of tile j + STAGES - 2 into the buffer of V_{j-2}.
        Each warpgroup waited for the products that read those buffers in step j - 1; the barrier makes sure both
        warpgroups got there before the copies overwrite them. (Triton 3.6 also puts a CTA barrier before every TMA
        copy that shares an mbarrier or buffer with the previous one: BLOCK_N // BOX_ROWS of them per tile.)"""
        gl.thread_barrier()
        tk = j + STAGES - 1
        _copy_kv_tile(k_desc, k_smem.index(tk % STAGES), k_bars.index(tk % STAGES), table_row_ptr, tk, last_page,
                      kv_col, tk < n_tiles, BLOCK_N, BOX_ROWS, PAGE_SIZE)
        tv = j + STAGES - 2
        _copy_kv_tile(v_desc, v_smem.index(tv % STAGES), v_bars.index(tv % STAGES), table_row_ptr, tv, last_page,
                      kv_col, tv < n_tiles, BLOCK_N, BOX_ROWS, PAGE_SIZE)

    @gluon.jit
    def _producer(n_tiles, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, k_empty, v_empty, table_row_ptr,
                  last_page, kv_col, BLOCK_N: gl.constexpr, BOX_ROWS: gl.constexpr, PAGE_SIZE: gl.constexpr,
                  STAGES: gl.constexpr):
        """Warp-specialised copy partition (1 warp): K_t then V_t for every tile, each into buffer t % STAGES once
        the consumers released its previous tile (empty barriers; the first pass waits on parity 1, which a fresh
        mbarrier reports complete)."""
        for t in range(n_tiles):
            stage = t % STAGES
            phase = ((t // STAGES) & 1) ^ 1
            mbarrier.wait(k_empty.index(stage), phase)
            _copy_kv_tile(k_desc, k_smem.index(stage), k_bars.index(stage), table_row_ptr, t, last_page, kv_col,
                          True, BLOCK_N, BOX_ROWS, PAGE_SIZE)
            mbarrier.wait(v_empty.index(stage), phase)
            _copy_kv_tile(v_desc, v_smem.index(stage), v_bars.index(stage), table_row_ptr, t, last_page, kv_col,
                          True, BLOCK_N, BOX_ROWS, PAGE_SIZE)

    @gluon.jit
    def _softmax_update(s, m_i, l_i, j, context_len, query_pos, qk_scale_log2,
                        s_layout: gl.constexpr, BLOCK_N: gl.constexpr, MASKED: gl.constexpr, CAUSAL: gl.constexpr):
        """s: [BLOCK_M, BLOCK_N] fp32 unscaled scores of tile j; m_i, l_i: [BLOCK_M] running max (log2 units,
        scaled) and sum. Returns p (unnormalised probabilities), alpha (rescale of the old output), m, l."""
        if MASKED:
            offs_n = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            visible = gl.expand_dims(offs_n < context_len, 0)
            if CAUSAL:
                visible = visible & (gl.expand_dims(offs_n, 0) <= gl.expand_dims(query_pos, 1))
            # where, not a multiply: stale cache slots past the context may hold NaN.
            s = gl.where(visible, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale_log2)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * qk_scale_log2 - gl.expand_dims(m_new, 1))
        l_i = l_i * alpha + gl.sum(p, axis=1)
        return p, alpha, m_new, l_i

    @gluon.jit
    def _attend_step(j, o, p, alpha, m_i, l_i, q_smem, k_smem, v_smem, k_bars, v_bars, k_empty, v_empty,
                     n_tiles, k_desc, v_desc, table_row_ptr, last_page, kv_col, context_len, query_pos, qk_scale_log2,
                     s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr,
                     BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BOX_ROWS: gl.constexpr, PAGE_SIZE: gl.constexpr,
                     STAGES: gl.constexpr, MASKED: gl.constexpr, CAUSAL: gl.constexpr, WARP_SPECIALIZE: gl.constexpr):
        """Step j >= 1: S_j = Q K_j^T and O = alpha O + P_{j-1} V_{j-1} in flight together; the softmax of S_j
        overlaps the P V product. o: [BLOCK_M, D] fp32 (o_layout), p: P_{j-1} in the A-operand layout."""
        k_stage = j % STAGES
        mbarrier.wait(k_bars.index(k_stage), (j // STAGES) & 1)
        s = warpgroup_mma(q_smem, k_smem.index(k_stage).permute((1, 0)),
                          gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        o = o * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        v_stage = (j - 1) % STAGES
        mbarrier.wait(v_bars.index(v_stage), ((j - 1) // STAGES) & 1)
        o = warpgroup_mma(p, v_smem.index(v_stage), o, is_async=True)
        if not WARP_SPECIALIZE:  # copies issued while both products run
            _refill(j, n_tiles, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, table_row_ptr, last_page, kv_col,
                    BLOCK_N, BOX_ROWS, PAGE_SIZE, STAGES)
        s = warpgroup_mma_wait(1, deps=(s,))  # S_j is done; P_{j-1} V_{j-1} may still run
        if WARP_SPECIALIZE:
            mbarrier.arrive(k_empty.index(k_stage))
        p_new, alpha, m_i, l_i = _softmax_update(s, m_i, l_i, j, context_len, query_pos, qk_scale_log2,
                                                 s_layout, BLOCK_N, MASKED, CAUSAL)
        o = warpgroup_mma_wait(0, deps=(o,))
        if WARP_SPECIALIZE:
            mbarrier.arrive(v_empty.index(v_stage))
        p = gl.convert_layout(p_new.to(q_smem.dtype), p_layout)
        return o, p, alpha, m_i, l_i

    @gluon.jit
    def _zero_v_rows_past(v_tile, valid_rows, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                          NUM_WARPS: gl.constexpr):
        """Rows >= valid_rows of the last V tile hold stale cache slots (maybe NaN; 0 * NaN = NaN in the MMA):
        zero them in shared memory and make the writes visible to the tensor cores (async proxy)."""
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (HEAD_DIM // 8), HEAD_DIM // 8], [NUM_WARPS, 1], [1, 0])
        v = v_tile.load(layout)
        rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))
        v = gl.where(gl.expand_dims(rows < valid_rows, 1), v, gl.zeros_like(v))
        v_tile.store(v)
        fence_async_shared()
        gl.thread_barrier()

    @gluon.jit
    def _store_output(out_ptr, o, l_i, q_start, q_len, row0, head, stride_ot, stride_oh,
                      BLOCK_M: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_WARPS: gl.constexpr,
                      o_layout: gl.constexpr):
        """out rows row0 .. row0 + BLOCK_M of the sequence's queries, those below q_len (the rows after them belong
        to the next sequence)."""
        o = o / gl.expand_dims(gl.convert_layout(l_i, gl.SliceLayout(1, o_layout)), 1)
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (HEAD_DIM // 8), HEAD_DIM // 8], [NUM_WARPS, 1], [1, 0])
        o = gl.convert_layout(o.to(out_ptr.dtype.element_ty), layout)  # 16-byte stores
        rows = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
        offsets = gl.expand_dims((q_start + rows).to(gl.int64) * stride_ot, 1) + gl.expand_dims(cols, 0)
        gl.store(out_ptr + head * stride_oh + offsets, o, mask=gl.expand_dims(rows < q_len, 1))

    @gluon.jit
    def _consumer(q_smem, k_smem, v_smem, q_bar, k_bars, v_bars, k_empty, v_empty, n_tiles, n_full,
                  k_desc, v_desc, table_row_ptr, last_page, kv_col, context_len, q_start, q_len, m_block, head,
                  qk_scale_log2, out_ptr, stride_ot, stride_oh,
                  HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BOX_ROWS: gl.constexpr,
                  PAGE_SIZE: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, NUM_WARPS: gl.constexpr,
                  WARP_SPECIALIZE: gl.constexpr):
        """The two 64-row warpgroups: every score and P V product, the online softmax and the output store."""
        # wgmma accumulators: warps [8, 1] = two warpgroups of 64 rows each.
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)

        query_pos = context_len - q_len + m_block * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, s_layout))
        o = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

        # Step 0: the score product alone (no P V yet). Always masked: a full tile passes the mask unchanged.
        mbarrier.wait(q_bar, 0)
        mbarrier.wait(k_bars.index(0), 0)
        s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout),
                          use_acc=False, is_async=True)
        if not WARP_SPECIALIZE:
            _refill(0, n_tiles, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, table_row_ptr, last_page, kv_col,
                    BLOCK_N, BOX_ROWS, PAGE_SIZE, STAGES)
        s = warpgroup_mma_wait(0, deps=(s,))
        if WARP_SPECIALIZE:
            mbarrier.arrive(k_empty.index(0))
        p, alpha, m_i, l_i = _softmax_update(s, m_i, l_i, 0, context_len, query_pos, qk_scale_log2,
                                             s_layout, BLOCK_N, True, CAUSAL)
        p = gl.convert_layout(p.to(q_smem.dtype), p_layout)

        for j in range(1, n_full):
            o, p, alpha, m_i, l_i = _attend_step(
                j, o, p, alpha, m_i, l_i, q_smem, k_smem, v_smem, k_bars, v_bars, k_empty, v_empty,
                n_tiles, k_desc, v_desc, table_row_ptr, last_page, kv_col, context_len, query_pos, qk_scale_log2,
                s_layout, o_layout, p_layout, BLOCK_M, BLOCK_N, BOX_ROWS, PAGE_SIZE, STAGES, False, CAUSAL,
                WARP_SPECIALIZE)
        for j in range(gl.maximum(n_full, 1), n_tiles):
            o, p, alpha, m_i, l_i = _attend_step(
                j, o, p, alpha, m_i, l_i, q_smem, k_smem, v_smem, k_bars, v_bars, k_empty, v_empty,
                n_tiles, k_desc, v_desc, table_row_ptr, last_page, kv_col, context_len, query_pos, qk_scale_log2,
                s_layout, o_layout, p_layout, BLOCK_M, BLOCK_N, BOX_ROWS, PAGE_SIZE, STAGES, True, CAUSAL,
                WARP_SPECIALIZE)

        # Last P V product; its V tile may reach past the context.
        last = n_tiles - 1
        v_stage = last % STAGES
        mbarrier.wait(v_bars.index(v_stage), (last // STAGES) & 1)
        v_tile = v_smem.index(v_stage)
        if n_tiles * BLOCK_N > context_len:
            _zero_v_rows_past(v_tile, context_len - last * BLOCK_N, BLOCK_N, HEAD_DIM, NUM_WARPS)
        o = o * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        o = warpgroup_mma(p, v_tile, o, is_async=True)
        o = warpgroup_mma_wait(0, deps=(o,))
        _store_output(out_ptr, o, l_i, q_start, q_len, m_block * BLOCK_M, head, stride_ot, stride_oh,
                      BLOCK_M, HEAD_DIM, NUM_WARPS, o_layout)

    @gluon.jit
    def _prefill_hopper_kernel(
        q_desc, k_desc, v_desc, out_ptr, block_tables_ptr, query_start_loc_ptr, context_lens_ptr,
        qk_scale_log2, stride_ot, stride_oh, stride_bt,
        QUERIES_PER_KV: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
        BOX_ROWS: gl.constexpr, PAGE_SIZE: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
        NUM_WARPS: gl.constexpr, WARP_SPECIALIZE: gl.constexpr,
    ):
        """q_desc: q as [num_tokens, num_heads * HEAD_DIM], [BLOCK_M, HEAD_DIM] boxes; k_desc, v_desc: the caches
        as [num_blocks * PAGE_SIZE, num_kv_heads * HEAD_DIM], [BOX_ROWS, HEAD_DIM] boxes. Grid: (num_heads,
        num_seqs, query blocks of the longest sequence)."""
        head = gl.program_id(0)
        seq = gl.program_id(1)
        # Reversed: the last query blocks have the longest causal rows, so they start first and the tail is short.
        m_block = gl.num_programs(2) - 1 - gl.program_id(2)
        q_start = gl.load(query_start_loc_ptr + seq)
        q_len = gl.load(query_start_loc_ptr + seq + 1) - q_start
        if m_block * BLOCK_M >= q_len:
            return
        context_len = gl.load(context_lens_ptr + seq)
        kv_col = (head // QUERIES_PER_KV) * HEAD_DIM
        first_pos = context_len - q_len + m_block * BLOCK_M  # position of the block's first query
        if CAUSAL:
            kv_end = gl.minimum(first_pos + BLOCK_M, context_len)
            # Keys below n_full * BLOCK_N are visible to every row of the block: no mask there.
            n_full = (first_pos + 1) // BLOCK_N
        else:
            kv_end = context_len
            n_full = context_len // BLOCK_N
        n_tiles = (kv_end + BLOCK_N - 1) // BLOCK_N  # >= 1: every sequence here has a query, so a key
        last_page = (context_len - 1) // PAGE_SIZE
        table_row_ptr = block_tables_ptr + seq.to(gl.int64) * stride_bt
        dtype: gl.constexpr = q_desc.dtype

        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(k_bars.index(i), count=1)
            mbarrier.init(v_bars.index(i), count=1)
        mbarrier.init(q_bar, count=1)
        if WARP_SPECIALIZE:
            k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
            v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
            for i in gl.static_range(STAGES):
                mbarrier.init(k_empty.index(i), count=1)  # one arrive per consumer step (thread 0 after a barrier)
                mbarrier.init(v_empty.index(i), count=1)
        else:
            k_empty = k_bars  # unused
            v_empty = v_bars
        fence_async_shared()
        gl.thread_barrier()

        # Rows past q_len belong to the next sequence (or lie past the tensor and read as zero): computed, not stored.
        mbarrier.expect(q_bar, BLOCK_M * HEAD_DIM * dtype.primitive_bitwidth // 8)
        tma.async_copy_global_to_shared(q_desc, [q_start + m_block * BLOCK_M, head * HEAD_DIM], q_bar, q_smem)
        if WARP_SPECIALIZE:
            gl.warp_specialize([
                (_consumer, (q_smem, k_smem, v_smem, q_bar, k_bars, v_bars, k_empty, v_empty, n_tiles, n_full,
                             k_desc, v_desc, table_row_ptr, last_page, kv_col, context_len, q_start, q_len, m_block,
                             head, qk_scale_log2, out_ptr, stride_ot, stride_oh, HEAD_DIM, BLOCK_M, BLOCK_N,
                             BOX_ROWS, PAGE_SIZE, STAGES, CAUSAL, NUM_WARPS, WARP_SPECIALIZE)),
                (_producer, (n_tiles, k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, k_empty, v_empty,
                             table_row_ptr, last_page, kv_col, BLOCK_N, BOX_ROWS, PAGE_SIZE, STAGES)),
            ], [1], [24])
        else:
            for t in gl.static_range(STAGES - 1):
                _copy_kv_tile(k_desc, k_smem.index(t), k_bars.index(t), table_row_ptr, t, last_page, kv_col,
                              t < n_tiles, BLOCK_N, BOX_ROWS, PAGE_SIZE)
            for t in gl.static_range(STAGES - 2):
                _copy_kv_tile(v_desc, v_smem.index(t), v_bars.index(t), table_row_ptr, t, last_page, kv_col,
                              t < n_tiles, BLOCK_N, BOX_ROWS, PAGE_SIZE)
            _consumer(q_smem, k_smem, v_smem, q_bar, k_bars, v_bars, k_empty, v_empty, n_tiles, n_full,
                      k_desc, v_desc, table_row_ptr, last_page, kv_col, context_len, q_start, q_len, m_block, head,
                      qk_scale_log2, out_ptr, stride_ot, stride_oh, HEAD_DIM, BLOCK_M, BLOCK_N, BOX_ROWS,
                      PAGE_SIZE, STAGES, CAUSAL, NUM_WARPS, WARP_SPECIALIZE)


# ---------------------------------------------------------------------------------------------------------------
# Host side.
# ---------------------------------------------------------------------------------------------------------------


def hopper_prefill_unsupported_reason(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    config: HopperPrefillConfig | None = None,
) -> str | None:
    """Why the Gluon kernel cannot serve these tensors (None when it can): Gluon missing, not an sm_90 CUDA device,
    or a layout the TMA copies cannot address."""
    if gluon is None:
        return f"Gluon is not importable ({GLUON_IMPORT_ERROR})"
    if q.device.type != "cuda" or not torch.cuda.is_available():
        return f"needs a CUDA device, got {q.device}"
    if torch.cuda.get_device_capability(q.device) != (9, 0):
        return f"needs compute capability 9.0 (Hopper), got {torch.cuda.get_device_capability(q.device)}"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"needs bf16 or fp16, got {q.dtype}"
    if q.dim() != 3 or key_cache.dim() != 4:
        return "needs q [tokens, heads, head_dim] and caches [blocks, block_size, kv_heads, head_dim]"
    head_dim = q.shape[2]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}"
    block_size = key_cache.shape[1]
    if block_size < 8 or block_size & (block_size - 1):
        return f"block_size must be a power of two >= 8 (a TMA box per page run), got {block_size}"
    cfg = config or default_hopper_prefill_config(head_dim, block_size)
    # Compiled sizes (sm_90, Triton 3.6): the explicit buffers plus ~100 bytes of barriers; the warp-specialised
    # variant also keeps a [BLOCK_M, head_dim] staging buffer of the epilogue (d128: 160 KB -> 192 KB).
    needed = cfg.shared_bytes(head_dim, q.element_size()) + 1024
    if cfg.warp_specialize:
        needed += BLOCK_M * head_dim * q.element_size()
    if needed > SMEM_LIMIT:
        return f"{cfg} needs about {needed} bytes of shared memory (at most {SMEM_LIMIT})"
    if q.stride(2) != 1 or q.stride(1) != head_dim or (q.stride(0) * q.element_size()) % 16 or q.data_ptr() % 16:
        return "q must have contiguous, 16-byte aligned [heads, head_dim] rows"
    caches = (("key_cache", key_cache), ("value_cache", key_cache if value_cache is None else value_cache))
    for name, cache in caches:
        # The cache is read as [num_blocks * block_size, num_kv_heads * head_dim] with one row stride.
        if cache.stride(3) != 1 or cache.stride(2) != head_dim or cache.stride(0) != block_size * cache.stride(1):
            return f"{name} must be [blocks, block_size, kv_heads, head_dim] with uniform row stride"
        if (cache.stride(1) * cache.element_size()) % 16 or cache.data_ptr() % 16:
            return f"{name} rows must be 16-byte aligned"
        if cache.shape[0] * block_size >= 2**31:
            return f"{name} has more than 2**31 rows (TMA coordinates are 32-bit)"
    return None


def supports_hopper_prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    config: HopperPrefillConfig | None = None,
) -> bool:
    """True only on an sm_90 CUDA device with Gluon importable and a layout the kernel's TMA copies can read."""
    return hopper_prefill_unsupported_reason(q, key_cache, value_cache, config) is None


def _descriptors(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_n: int) -> tuple:
    """Gluon TMA descriptors: q as [tokens, heads * head_dim] with [BLOCK_M, head_dim] boxes, each cache as
    [blocks * block_size, kv_heads * head_dim] with [min(block_size, block_n), head_dim] boxes (one page run)."""
    num_tokens, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = key_cache.shape
    element = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_M, head_dim], element)
    q_desc = GluonTensorDescriptor(q, [num_tokens, num_heads * head_dim], [q.stride(0), 1], [BLOCK_M, head_dim],
                                   q_layout)
    box_rows = min(block_size, block_n)
    kv_layout = gl.NVMMASharedLayout.get_default_for([box_rows, head_dim], element)
    kv_descs = tuple(
        GluonTensorDescriptor(c, [num_blocks * block_size, num_kv_heads * head_dim], [c.stride(1), 1],
                              [box_rows, head_dim], kv_layout)
        for c in (key_cache, value_cache)
    )
    return (q_desc, *kv_descs)


def paged_prefill_attention_hopper(
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
    config: HopperPrefillConfig | None = None,
) -> torch.Tensor:
    """kernels.prefill_attention.paged_prefill_attention on the Gluon Hopper kernel (same arguments and result).

    q: [num_tokens, num_heads, head_dim] bf16/fp16; caches: [num_blocks, block_size, num_kv_heads, head_dim];
    block_tables: [num_seqs, max_blocks] int32; query_start_loc: [num_seqs + 1] int32; context_lens: [num_seqs]
    int32. Raises ValueError for inconsistent arguments and RuntimeError where the kernel cannot run
    (supports_hopper_prefill)."""
    num_seqs, num_heads, num_kv_heads, _, _ = _check_args(
        q, key_cache, value_cache, block_tables, query_start_loc, context_lens, out
    )
    reason = hopper_prefill_unsupported_reason(q, key_cache, value_cache, config)
    if reason is not None:
        raise RuntimeError(f"paged_prefill_attention_hopper: {reason}")
    return launch_hopper_prefill(q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale, causal,
                                 max_query_len, out, num_seqs, num_heads, num_kv_heads, config)


def launch_hopper_prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    causal: bool,
    max_query_len: int | None,
    out: torch.Tensor | None,
    num_seqs: int,
    num_heads: int,
    num_kv_heads: int,
    config: HopperPrefillConfig | None = None,
) -> torch.Tensor:
    """The launch itself, for callers that already checked the arguments (_check_args) and that the kernel can run
    (hopper_prefill_unsupported_reason is None): paged_prefill_attention's dispatch checks once, not twice."""
    head_dim, block_size = q.shape[2], key_cache.shape[1]
    if out is None:
        out = torch.empty_like(q)
    if q.shape[0] == 0 or num_seqs == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item())  # one sync
    if max_query_len <= 0:
        return out
    cfg = config or default_hopper_prefill_config(head_dim, block_size)
    if cfg.schedule != "cooperative":
        from kernels.prefill_gluon_pingpong import launch_pingpong_prefill  # imports this module

        return launch_pingpong_prefill(q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
                                       causal, max_query_len, out, num_seqs, num_heads, num_kv_heads, cfg)
    q_desc, k_desc, v_desc = _descriptors(q, key_cache, value_cache, cfg.block_n)
    grid = (num_heads, num_seqs, -(-max_query_len // BLOCK_M))
    _prefill_hopper_kernel[grid](
        q_desc, k_desc, v_desc, out, block_tables, query_start_loc, context_lens,
        scale * LOG2_E, out.stride(0), out.stride(1), block_tables.stride(0),
        QUERIES_PER_KV=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=cfg.block_n,
        BOX_ROWS=min(block_size, cfg.block_n), PAGE_SIZE=block_size, STAGES=cfg.stages, CAUSAL=bool(causal),
        NUM_WARPS=NUM_WARPS, WARP_SPECIALIZE=cfg.warp_specialize,
        num_warps=NUM_WARPS,
    )
    return out
