"""Paged prefill flash attention for Hopper (sm_90) in Gluon, Triton's explicit-layout dialect: the kernel.

kernels/prefill_gluon.py holds its config, support checks and launcher. FA3's structure, written by hand:

* a 128-row query block of one query head and sequence is a work item, shared by two 64-row consumer
  warpgroups, each its own partition (gl.warp_specialize: the default partition and a 4-warp worker), with its own
  softmax state; a 1-warp producer partition copies Q (two 64-row halves) and the K/V tiles by TMA, paced by
  ready/empty mbarrier pairs (the empty barriers count one arrival per warpgroup);
* K/V tiles come from the cache viewed as [num_blocks * block_size, num_kv_heads * head_dim], one copy per page run
  of min(block_size, BLOCK_N) rows into consecutive rows of a ring of STAGES buffers, K and V with their own
  barriers (a score product can start before its V tile lands);
* the wgmma products are asynchronous and waited on explicitly: in step j the score product S_j = Q K_j^T and
  O += P_{j-1} V_{j-1} are issued back to back, then the warpgroup waits for S_j only, and the softmax of S_j runs
  while P_{j-1} V_{j-1} is on the tensor cores (FA3's intra-warpgroup pipelining);
* PINGPONG: the warpgroups hand a turn back and forth through two mbarriers, each issuing its products in its turn,
  so one's products run while the other computes its softmax (FA3's inter-warpgroup schedule);
* tiles every row of a warpgroup sees whole run without mask arithmetic; only diagonal / last tiles apply masks;
* persistent launch: one program per SM takes work items heaviest first (the last query block of every (sequence,
  head) pair, heads fastest, then the block before...), round r taking item r * P + p, or r * P + P - 1 - p on
  odd rounds (a snake, so each program's heavy and light rounds even out). The producer copies the next item's Q
  as soon as both warpgroups finished their last score product, and its first K/V tiles as soon as the ring has
  room, so an item's start overlaps the previous one's last products and output store. With no more items than
  SMs, each program takes one item.

Triton 3.6's Gluon API (the H100 machine's version) is the target. The module imports without Gluon (CPU CI, other
Triton versions): `gluon` is then None and GLUON_IMPORT_ERROR says why.
"""

from __future__ import annotations

try:  # Gluon's Hopper API as of Triton 3.6; any import failure leaves the kernel undefined, not the module.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    GLUON_IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError or anything a changed API raises
    gluon = None
    GLUON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

BLOCK_M = 128  # query rows per work item
HALF_M = BLOCK_M // 2  # query rows per consumer warpgroup
CONSUMER_WARPS = 4  # one warpgroup per consumer partition
CONSUMER_REGS = 240  # setmaxnreg of the worker warpgroup; the producer warp gets PRODUCER_REGS
PRODUCER_REGS = 24

if gluon is not None:
    # Module constants as Gluon constexprs (jit functions read no other globals).
    _HALF_M = gl.constexpr(HALF_M)
    _BLOCK_M = gl.constexpr(BLOCK_M)
    _CONSUMER_WARPS = gl.constexpr(CONSUMER_WARPS)
    _CONSUMER_REGS = gl.constexpr(CONSUMER_REGS)
    _PRODUCER_REGS = gl.constexpr(PRODUCER_REGS)

    @gluon.jit
    def kv_ring(k_desc, v_desc, STAGES: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                CONSUMERS: gl.constexpr):
        """K and V rings of STAGES [BLOCK_N, HEAD_DIM] buffers in the descriptors' layouts, with their barriers
        initialised: ready (the producer's copies, one expected arrival) and empty (one arrival per consumer
        warpgroup). The caller fences and syncs after its own barrier setup."""
        dtype: gl.constexpr = k_desc.dtype
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=CONSUMERS)
            mbarrier.init(v_empty.index(i), count=CONSUMERS)
        return k_smem, v_smem, k_ready, v_ready, k_empty, v_empty

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
    def _work_item(rnd, num_programs, num_items, num_heads, num_seqs, n_mblocks, query_start_loc_ptr,
                   context_lens_ptr, block_tables_ptr, stride_bt,
                   QUERIES_PER_KV: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                   PAGE_SIZE: gl.constexpr, CAUSAL: gl.constexpr):
        """The work item of this program in round rnd and its geometry. Items are numbered heaviest first: the last
        query block of every (sequence, head) pair, heads fastest (neighbours share K/V through L2), then the
        block before it, and so on. valid is False past the list and for blocks past a shorter sequence's end."""
        pid = gl.program_id(0)
        item = rnd * num_programs + pid + (rnd & 1) * (num_programs - 1 - 2 * pid)
        head = item % num_heads
        rest = item // num_heads
        seq = rest % num_seqs
        m_block = n_mblocks - 1 - rest // num_seqs
        q_start = gl.load(query_start_loc_ptr + seq)
        q_len = gl.load(query_start_loc_ptr + seq + 1) - q_start
        valid = (item < num_items) & (m_block * _BLOCK_M < q_len)
        context_len = gl.load(context_lens_ptr + seq)
        first_pos = context_len - q_len + m_block * _BLOCK_M  # position of the block's first query
        if CAUSAL:
            kv_end = gl.minimum(first_pos + _BLOCK_M, context_len)
        else:
            kv_end = context_len
        n_tiles = (kv_end + BLOCK_N - 1) // BLOCK_N
        last_page = (context_len - 1) // PAGE_SIZE
        table_row_ptr = block_tables_ptr + seq.to(gl.int64) * stride_bt
        kv_col = (head // QUERIES_PER_KV) * HEAD_DIM
        return valid, head, m_block, q_start, q_len, context_len, n_tiles, last_page, table_row_ptr, kv_col

    @gluon.jit
    def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty,
                  v_empty, query_start_loc_ptr, context_lens_ptr, block_tables_ptr, stride_bt, num_items, num_heads,
                  num_seqs, n_mblocks, num_rounds,
                  QUERIES_PER_KV: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                  BOX_ROWS: gl.constexpr, PAGE_SIZE: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr):
        """1 warp: per work item, Q's two halves once both warpgroups released the previous Q, then K_t and V_t of
        every tile into ring slot (tile count of this program) % STAGES once both warpgroups released it."""
        num_programs = gl.num_programs(0)
        tile_count = 0
        item_count = 0
        for rnd in range(num_rounds):
            valid, head, m_block, q_start, q_len, context_len, n_tiles, last_page, table_row_ptr, kv_col = _work_item(
                rnd, num_programs, num_items, num_heads, num_seqs, n_mblocks, query_start_loc_ptr, context_lens_ptr,
                block_tables_ptr, stride_bt, QUERIES_PER_KV, HEAD_DIM, BLOCK_N, PAGE_SIZE, CAUSAL)
            if valid:
                mbarrier.wait(q_empty, (item_count & 1) ^ 1)  # a fresh barrier passes parity 1
                mbarrier.expect(q_ready, _BLOCK_M * HEAD_DIM * q_desc.dtype.primitive_bitwidth // 8)
                row = q_start + m_block * _BLOCK_M  # rows past the sequence are computed, not stored
                tma.async_copy_global_to_shared(q_desc, [row, head * HEAD_DIM], q_ready, q_smem.index(0))
                tma.async_copy_global_to_shared(q_desc, [row + _HALF_M, head * HEAD_DIM], q_ready, q_smem.index(1))
                for t in range(n_tiles):
                    stage = tile_count % STAGES
                    phase = ((tile_count // STAGES) & 1) ^ 1
                    mbarrier.wait(k_empty.index(stage), phase)
                    _copy_kv_tile(k_desc, k_smem.index(stage), k_ready.index(stage), table_row_ptr, t, last_page,
                                  kv_col, True, BLOCK_N, BOX_ROWS, PAGE_SIZE)
                    mbarrier.wait(v_empty.index(stage), phase)
                    _copy_kv_tile(v_desc, v_smem.index(stage), v_ready.index(stage), table_row_ptr, t, last_page,
                                  kv_col, True, BLOCK_N, BOX_ROWS, PAGE_SIZE)
                    tile_count += 1
                item_count += 1

    @gluon.jit
    def _attend_step(j, ring, turn_count, o, p, alpha, m_i, l_i, q_tile, k_smem, v_smem, k_ready, v_ready, k_empty,
                     v_empty, my_turn, other_turn, context_len, query_pos, qk_scale_log2,
                     s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr, BLOCK_N: gl.constexpr,
                     STAGES: gl.constexpr, MASKED: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr):
        """Tile j >= 1 of the item whose tile 0 sits at ring position `ring`: S_j = Q K_j^T and O = alpha O +
        P_{j-1} V_{j-1} issued in this warpgroup's turn, the softmax of S_j while P_{j-1} V_{j-1} runs."""
        k_slot = (ring + j) % STAGES
        mbarrier.wait(k_ready.index(k_slot), ((ring + j) // STAGES) & 1)
        if PINGPONG:
            mbarrier.wait(my_turn, turn_count & 1)
        s = warpgroup_mma(q_tile, k_smem.index(k_slot).permute((1, 0)),
                          gl.zeros([_HALF_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        o = o * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        v_slot = (ring + j - 1) % STAGES
        mbarrier.wait(v_ready.index(v_slot), ((ring + j - 1) // STAGES) & 1)
        o = warpgroup_mma(p, v_smem.index(v_slot), o, is_async=True)
        if PINGPONG:
            mbarrier.arrive(other_turn)
        s = warpgroup_mma_wait(1, deps=(s,))
        mbarrier.arrive(k_empty.index(k_slot))
        p_new, alpha, m_i, l_i = _softmax_update(s, m_i, l_i, j, context_len, query_pos, qk_scale_log2,
                                                 s_layout, BLOCK_N, MASKED, CAUSAL)
        o = warpgroup_mma_wait(0, deps=(o,))
        mbarrier.arrive(v_empty.index(v_slot))
        p = gl.convert_layout(p_new.to(q_tile.dtype), p_layout)
        return o, p, alpha, m_i, l_i, turn_count + 1

    @gluon.jit
    def _consumer(WG: gl.constexpr, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                  turns, out_ptr, query_start_loc_ptr, context_lens_ptr, block_tables_ptr, stride_bt, num_items,
                  num_heads, num_seqs, n_mblocks, num_rounds, qk_scale_log2, stride_ot, stride_oh,
                  QUERIES_PER_KV: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                  PAGE_SIZE: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr):
        """Warpgroup WG (0 or 1): query rows WG * 64 .. + 64 of every block this program takes."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_CONSUMER_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_CONSUMER_WARPS, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        my_turn = turns.index(WG)
        other_turn = turns.index(1 - WG)
        q_tile = q_smem.index(WG)
        num_programs = gl.num_programs(0)
        ring = 0  # ring position of the current item's tile 0
        item_count = 0
        turn_count = 0
        for rnd in range(num_rounds):
            valid, head, m_block, q_start, q_len, context_len, n_tiles, last_page, table_row_ptr, kv_col = _work_item(
                rnd, num_programs, num_items, num_heads, num_seqs, n_mblocks, query_start_loc_ptr, context_lens_ptr,
                block_tables_ptr, stride_bt, QUERIES_PER_KV, HEAD_DIM, BLOCK_N, PAGE_SIZE, CAUSAL)
            if valid:
                row0 = m_block * _BLOCK_M + WG * _HALF_M
                first_pos = context_len - q_len + row0
                query_pos = first_pos + gl.arange(0, _HALF_M, layout=gl.SliceLayout(1, s_layout))
                if CAUSAL:
                    n_full = (first_pos + 1) // BLOCK_N  # keys below n_full * BLOCK_N: visible to all 64 rows
                else:
                    n_full = context_len // BLOCK_N
                m_i = gl.full([_HALF_M], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
                l_i = gl.zeros([_HALF_M], gl.float32, layout=gl.SliceLayout(1, s_layout))
                o = gl.zeros([_HALF_M, HEAD_DIM], gl.float32, o_layout)

                # Tile 0: the score product alone. Always masked (a full tile passes the mask unchanged).
                mbarrier.wait(q_ready, item_count & 1)
                k_slot = ring % STAGES
                mbarrier.wait(k_ready.index(k_slot), (ring // STAGES) & 1)
                if PINGPONG:
                    mbarrier.wait(my_turn, turn_count & 1)
                s = warpgroup_mma(q_tile, k_smem.index(k_slot).permute((1, 0)),
                                  gl.zeros([_HALF_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
                if PINGPONG:
                    mbarrier.arrive(other_turn)
                turn_count += 1
                s = warpgroup_mma_wait(0, deps=(s,))
                mbarrier.arrive(k_empty.index(k_slot))
                p, alpha, m_i, l_i = _softmax_update(s, m_i, l_i, 0, context_len, query_pos, qk_scale_log2,
                                                     s_layout, BLOCK_N, True, CAUSAL)
                p = gl.convert_layout(p.to(q_tile.dtype), p_layout)
                for j in range(1, n_full):
                    o, p, alpha, m_i, l_i, turn_count = _attend_step(
                        j, ring, turn_count, o, p, alpha, m_i, l_i, q_tile, k_smem, v_smem, k_ready, v_ready,
                        k_empty, v_empty, my_turn, other_turn, context_len, query_pos, qk_scale_log2,
                        s_layout, o_layout, p_layout, BLOCK_N, STAGES, False, CAUSAL, PINGPONG)
                for j in range(gl.maximum(n_full, 1), n_tiles):
                    o, p, alpha, m_i, l_i, turn_count = _attend_step(
                        j, ring, turn_count, o, p, alpha, m_i, l_i, q_tile, k_smem, v_smem, k_ready, v_ready,
                        k_empty, v_empty, my_turn, other_turn, context_len, query_pos, qk_scale_log2,
                        s_layout, o_layout, p_layout, BLOCK_N, STAGES, True, CAUSAL, PINGPONG)
                mbarrier.arrive(q_empty)  # every score product of this item is done: the next Q may land

                # Last P V product; its V tile may reach past the context.
                last = ring + n_tiles - 1
                v_slot = last % STAGES
                mbarrier.wait(v_ready.index(v_slot), (last // STAGES) & 1)
                v_tile = v_smem.index(v_slot)
                if n_tiles * BLOCK_N > context_len:
                    # Both warpgroups zero the same rows (the same values), each before its own product.
                    _zero_v_rows_past(v_tile, context_len - (n_tiles - 1) * BLOCK_N, BLOCK_N, HEAD_DIM,
                                      _CONSUMER_WARPS)
                o = o * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
                o = warpgroup_mma(p, v_tile, o, is_async=True)
                o = warpgroup_mma_wait(0, deps=(o,))
                mbarrier.arrive(v_empty.index(v_slot))
                _store_output(out_ptr, o, l_i, q_start, q_len, row0, head, stride_ot, stride_oh,
                              _HALF_M, HEAD_DIM, _CONSUMER_WARPS, o_layout)
                ring += n_tiles
                item_count += 1

    @gluon.jit(do_not_specialize=["stride_bt", "num_seqs", "n_mblocks", "num_items", "num_rounds"])
    def _prefill_hopper_kernel(
        q_desc, k_desc, v_desc, out_ptr, block_tables_ptr, query_start_loc_ptr, context_lens_ptr,
        qk_scale_log2, stride_ot, stride_oh, stride_bt, num_heads, num_seqs, n_mblocks, num_items, num_rounds,
        QUERIES_PER_KV: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, BOX_ROWS: gl.constexpr,
        PAGE_SIZE: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr,
    ):
        """q_desc: q as [num_tokens, num_heads * HEAD_DIM], [64, HEAD_DIM] boxes; k_desc, v_desc: the caches as
        [num_blocks * PAGE_SIZE, num_kv_heads * HEAD_DIM], [BOX_ROWS, HEAD_DIM] boxes. Grid: (programs,), each
        taking num_rounds work items of the num_items = num_heads * num_seqs * n_mblocks (_work_item)."""
        dtype: gl.constexpr = q_desc.dtype
        q_smem = gl.allocate_shared_memory(dtype, [2, _HALF_M, HEAD_DIM], q_desc.layout)
        k_smem, v_smem, k_ready, v_ready, k_empty, v_empty = kv_ring(k_desc, v_desc, STAGES, BLOCK_N, HEAD_DIM, 2)
        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_ready, count=1)
        mbarrier.init(q_empty, count=2)
        mbarrier.init(turns.index(0), count=1)
        mbarrier.init(turns.index(1), count=1)
        fence_async_shared()
        gl.thread_barrier()
        mbarrier.arrive(turns.index(0))  # warpgroup 0 has the first turn
        # The consumers' arguments are written out twice: a tuple kept in a variable loses its constexprs.

        gl.warp_specialize([
            (_consumer, (0, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, turns,
                         out_ptr, query_start_loc_ptr, context_lens_ptr, block_tables_ptr, stride_bt, num_items,
                         num_heads, num_seqs, n_mblocks, num_rounds, qk_scale_log2, stride_ot, stride_oh,
                         QUERIES_PER_KV, HEAD_DIM, BLOCK_N, PAGE_SIZE, STAGES, CAUSAL, PINGPONG)),
            (_consumer, (1, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, turns,
                         out_ptr, query_start_loc_ptr, context_lens_ptr, block_tables_ptr, stride_bt, num_items,
                         num_heads, num_seqs, n_mblocks, num_rounds, qk_scale_log2, stride_ot, stride_oh,
                         QUERIES_PER_KV, HEAD_DIM, BLOCK_N, PAGE_SIZE, STAGES, CAUSAL, PINGPONG)),
            (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready,
                         k_empty, v_empty, query_start_loc_ptr, context_lens_ptr, block_tables_ptr, stride_bt,
                         num_items, num_heads, num_seqs, n_mblocks, num_rounds, QUERIES_PER_KV, HEAD_DIM, BLOCK_N,
                         BOX_ROWS, PAGE_SIZE, STAGES, CAUSAL)),
        ], [_CONSUMER_WARPS, 1], [_CONSUMER_REGS, _PRODUCER_REGS])
