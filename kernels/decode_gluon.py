"""Paged decode attention for Hopper (sm_90) in Gluon: the kernel, its support check and its launch.

Same work split as kernels.decode_attention's split kernels (one program per (sequence, kv head, split); with more
than one split the same merge kernel combines the parts), different ring: a 1-warp producer partition copies the
K and V tiles by TMA (one copy per page run, so 16-key pages work as well as 64-key ones) into a ring of STAGES
buffers, and the 4-warp consumer warpgroup hands each K buffer back as soon as its score product is done and each
V buffer as soon as its P V product is, so the producer refills it at once. The Triton kernels hold a tile's
buffers until the loop iteration ends; at two buffers that leaves less than two tiles in flight on average, and
at three the SMs ask for more than HBM serves and finish unevenly (bench/EXPERIMENTS.md). It is the default where
it measured faster (default_decode_config).

The producer copies a split's first tile before the context length arrives, and the consumer requests q at
once: one dependent memory round trip fewer before the first product.

A ring deeper than the copies it keeps in flight (DecodeConfig.in_flight) lets the copies go on while the consumer
holds a buffer, without asking HBM for more than it serves evenly; as a dependent launch it also fills more of the
ring before its wait.

As a programmatic dependent launch (DecodeConfig.pdl, the default where this kernel is) a call is scheduled while
the previous kernel in the stream still runs: each program lets the next kernel be scheduled at once, looks up its
pages and fills its ring with tiles older than the newest key, and waits for the previous kernel on the device only
before it reads q (the consumer) and copies the tile that may hold the newest key (the producer). The launch gap
and the first copies then overlap the previous kernel's last programs.

The kv head's query heads are the first QUERIES_PER_KV of 64 rows of one wgmma (the rest are zero): the products
are small next to the bytes each tile brings.

The module imports without Gluon (CPU CI, other Triton versions): `gluon_decode_unsupported_reason` then says why.
"""

from __future__ import annotations

import torch

from kernels.launch_memo import SignatureMemo, device_capability
from kernels.prefill_gluon import (
    cache_descriptor,
    gluon_layout_signature,
    gluon_layout_unsupported_reason,
    shared_layout,
)
from kernels.prefill_gluon_kernel import gluon

QUERY_ROWS = 64  # rows of one warpgroup's wgmma
CONSUMER_WARPS = 4
PRODUCER_REGS = 24

if gluon is not None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from kernels.prefill_gluon_kernel import _attend_step, _copy_kv_tile, _softmax_update, _zero_v_rows_past, kv_ring

    _QUERY_ROWS = gl.constexpr(QUERY_ROWS)
    _CONSUMER_WARPS = gl.constexpr(CONSUMER_WARPS)
    _PRODUCER_REGS = gl.constexpr(PRODUCER_REGS)

    @gluon.jit
    def _wait_for_previous_kernel():
        """griddepcontrol.wait: the previous kernel in the stream has finished and its writes are visible (a no-op
        unless this kernel was launched as a programmatic dependent launch)."""
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _let_next_kernel_launch():
        """griddepcontrol.launch_dependents: a dependent launch after this kernel may be scheduled once every
        program of this grid got here or ended; it still waits for this grid on the device before using its
        results."""
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def _split_range(context_len, split_len, BLOCK_N: gl.constexpr):
        """This program's keys kv_start .. kv_end of its sequence's context_len, and their tile count (<= 0: nothing
        to do)."""
        kv_start = gl.program_id(2) * split_len
        kv_end = gl.minimum(kv_start + split_len, context_len)
        n_tiles = (kv_end - kv_start + BLOCK_N - 1) // BLOCK_N
        return kv_start, kv_end, n_tiles

    @gluon.jit
    def _wait_until_landed(ready, tile, IN_FLIGHT: gl.constexpr, STAGES: gl.constexpr):
        """Tile `tile` of the ring has landed: with at most IN_FLIGHT copies on their way, tile i is copied only after
        tile i - IN_FLIGHT (a no-op without a cap, IN_FLIGHT >= STAGES, and before the first IN_FLIGHT tiles)."""
        if IN_FLIGHT < STAGES:
            if tile >= 0:
                mbarrier.wait(ready.index(tile % STAGES), (tile // STAGES) & 1)

    @gluon.jit
    def _decode_producer(k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, block_tables_ptr,
                         context_lens_ptr, stride_bt, split_len, table_width,
                         HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, BOX_ROWS: gl.constexpr,
                         PAGE_SIZE: gl.constexpr, STAGES: gl.constexpr, PDL: gl.constexpr,
                         IN_FLIGHT: gl.constexpr):
        """1 warp: K_i and V_i of every tile into ring slot i % STAGES once the consumer released it.

        Tile 0 is copied before the context length arrives (one memory round trip fewer before the first product):
        its page ids are clamped into the table row instead of to the sequence's last page, so a lookup past the
        context reads some entry of the row, and the copy lands rows the consumer masks (keys) or zeroes (values);
        a page id out of the cache makes TMA fill zeros. A split past the sequence waits for that copy and stops.
        The context length is requested first, so its round trip overlaps the page id's.

        PDL (a programmatic dependent launch, which may start while the previous kernel still runs): the previous
        kernel may be the one writing this step's newest key and value, so nothing is copied before the context
        length says which tiles are older, and the split's last tile waits for the previous kernel; the
        context length and block table were written before it.

        IN_FLIGHT < STAGES: tile i is copied only once tile i - IN_FLIGHT has landed, so at most IN_FLIGHT copies of
        K (and of V) are on their way while the rest of the ring holds landed tiles."""
        seq = gl.program_id(0)
        kv_head = gl.program_id(1)
        if PDL:
            _let_next_kernel_launch()
        context_len = gl.load(context_lens_ptr + seq)
        table_row_ptr = block_tables_ptr + seq.to(gl.int64) * stride_bt
        first_tile = gl.program_id(2) * split_len // BLOCK_N  # split_len is a whole number of tiles
        if PDL:
            first_loop_tile = 0
        else:
            _copy_kv_tile(k_desc, k_smem.index(0), k_ready.index(0), table_row_ptr, first_tile, table_width - 1,
                          kv_head * HEAD_DIM, True, BLOCK_N, BOX_ROWS, PAGE_SIZE)
            _copy_kv_tile(v_desc, v_smem.index(0), v_ready.index(0), table_row_ptr, first_tile, table_width - 1,
                          kv_head * HEAD_DIM, True, BLOCK_N, BOX_ROWS, PAGE_SIZE)
            first_loop_tile = 1
        kv_start, kv_end, n_tiles = _split_range(context_len, split_len, BLOCK_N)
        last_page = (context_len - 1) // PAGE_SIZE
        for i in range(first_loop_tile, n_tiles):
            stage = i % STAGES
            phase = ((i // STAGES) & 1) ^ 1  # a fresh barrier passes parity 1
            if PDL:
                if i == n_tiles - 1:  # the tile that may hold the newest key
                    _wait_for_previous_kernel()
            mbarrier.wait(k_empty.index(stage), phase)
            _wait_until_landed(k_ready, i - IN_FLIGHT, IN_FLIGHT, STAGES)
            _copy_kv_tile(k_desc, k_smem.index(stage), k_ready.index(stage), table_row_ptr, first_tile + i,
                          last_page, kv_head * HEAD_DIM, True, BLOCK_N, BOX_ROWS, PAGE_SIZE)
            mbarrier.wait(v_empty.index(stage), phase)
            _wait_until_landed(v_ready, i - IN_FLIGHT, IN_FLIGHT, STAGES)
            _copy_kv_tile(v_desc, v_smem.index(stage), v_ready.index(stage), table_row_ptr, first_tile + i,
                          last_page, kv_head * HEAD_DIM, True, BLOCK_N, BOX_ROWS, PAGE_SIZE)
        if not PDL:
            if n_tiles <= 0:  # nobody consumes tile 0: the program may not end with copies still landing
                mbarrier.wait(k_ready.index(0), 0)
                mbarrier.wait(v_ready.index(0), 0)

    @gluon.jit
    def _decode_consumer(q_ptr, out_ptr, part_out_ptr, part_lse_ptr, q_smem, k_smem, v_smem, k_ready, v_ready,
                         k_empty, v_empty, context_lens_ptr, split_len, qk_scale_log2,
                         stride_qs, stride_qh, stride_os, stride_oh, stride_ps, stride_ph, stride_pk,
                         QUERIES_PER_KV: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                         STAGES: gl.constexpr, DIRECT: gl.constexpr, PDL: gl.constexpr):
        """4 warps: q into shared memory, every tile of the split, then the output (DIRECT) or the split's part
        (fp32 output and log-sum-exp in log2 units, for the merge kernel). PDL: q is the previous kernel's output,
        read once that kernel has finished."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_CONSUMER_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_CONSUMER_WARPS, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        # 16-byte row accesses for q in and the result out.
        io_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (HEAD_DIM // 8), HEAD_DIM // 8],
                                                   [_CONSUMER_WARPS, 1], [1, 0])
        if PDL:
            _wait_for_previous_kernel()
        # q is requested before the context length arrives (its rows exist whatever the length).
        seq = gl.program_id(0)
        rows = gl.arange(0, _QUERY_ROWS, layout=gl.SliceLayout(1, io_layout))
        cols = gl.expand_dims(gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, io_layout)), 0)
        heads = gl.program_id(1) * QUERIES_PER_KV + rows
        row_mask = gl.expand_dims(rows < QUERIES_PER_KV, 1)
        q = gl.load(q_ptr + seq.to(gl.int64) * stride_qs + gl.expand_dims(heads * stride_qh, 1) + cols,
                    mask=row_mask, other=0.0)
        kv_start, kv_end, n_tiles = _split_range(gl.load(context_lens_ptr + seq), split_len, BLOCK_N)
        if n_tiles > 0:  # splits past the sequence's length write nothing; the merge ignores them
            q_smem.store(q)
            fence_async_shared()  # ordinary stores, read next by the tensor cores
            gl.thread_barrier()

            m_i = gl.full([_QUERY_ROWS], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
            l_i = gl.zeros([_QUERY_ROWS], gl.float32, layout=gl.SliceLayout(1, s_layout))
            o = gl.zeros([_QUERY_ROWS, HEAD_DIM], gl.float32, o_layout)
            query_pos = gl.zeros([_QUERY_ROWS], gl.int32, layout=gl.SliceLayout(1, s_layout))  # not causal: unused
            # Tile indices from here on count from the split's first key, and so does the mask bound.
            split_keys = kv_end - kv_start
            n_full = split_keys // BLOCK_N
            # Tile 0: the score product alone (through the mask: a full tile passes it unchanged).
            mbarrier.wait(k_ready.index(0), 0)
            s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)),
                              gl.zeros([_QUERY_ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s,))
            mbarrier.arrive(k_empty.index(0))
            p, alpha, m_i, l_i = _softmax_update(s, m_i, l_i, 0, split_keys, query_pos, qk_scale_log2, s_layout,
                                                 BLOCK_N, True, False)
            p = gl.convert_layout(p.to(q_smem.dtype), p_layout)
            # Tile j: S_j = q K_j^T and O = alpha O + P_{j-1} V_{j-1} issued together, the softmax of S_j while
            # P_{j-1} V_{j-1} runs; each buffer goes back to the producer as soon as its product is done.
            turn = k_ready.index(0)  # no turns in decode (one warpgroup): a placeholder the step never touches
            turn_count = 0
            for j in range(1, n_full):
                o, p, alpha, m_i, l_i, turn_count = _attend_step(
                    j, 0, turn_count, o, p, alpha, m_i, l_i, q_smem, k_smem, v_smem, k_ready, v_ready, k_empty,
                    v_empty, turn, turn, split_keys, query_pos, qk_scale_log2, s_layout, o_layout, p_layout,
                    BLOCK_N, STAGES, False, False, False)
            for j in range(gl.maximum(n_full, 1), n_tiles):
                o, p, alpha, m_i, l_i, turn_count = _attend_step(
                    j, 0, turn_count, o, p, alpha, m_i, l_i, q_smem, k_smem, v_smem, k_ready, v_ready, k_empty,
                    v_empty, turn, turn, split_keys, query_pos, qk_scale_log2, s_layout, o_layout, p_layout,
                    BLOCK_N, STAGES, True, False, False)
            # The last P V product; its V tile may reach past the context.
            last = n_tiles - 1
            v_slot = last % STAGES
            mbarrier.wait(v_ready.index(v_slot), (last // STAGES) & 1)
            v_tile = v_smem.index(v_slot)
            if n_tiles * BLOCK_N > split_keys:
                _zero_v_rows_past(v_tile, split_keys - last * BLOCK_N, BLOCK_N, HEAD_DIM, _CONSUMER_WARPS)
            o = o * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
            o = warpgroup_mma(p, v_tile, o, is_async=True)
            o = warpgroup_mma_wait(0, deps=(o,))
            mbarrier.arrive(v_empty.index(v_slot))

            o = o / gl.expand_dims(gl.convert_layout(l_i, gl.SliceLayout(1, o_layout)), 1)
            if DIRECT:
                result = gl.convert_layout(o.to(out_ptr.dtype.element_ty), io_layout)
                gl.store(out_ptr + seq.to(gl.int64) * stride_os + gl.expand_dims(heads * stride_oh, 1) + cols,
                         result, mask=row_mask)
            else:
                part = seq.to(gl.int64) * stride_ps + heads * stride_ph + gl.program_id(2) * stride_pk
                gl.store(part_out_ptr + gl.expand_dims(part * HEAD_DIM, 1) + cols, gl.convert_layout(o, io_layout),
                         mask=row_mask)
                lse = gl.convert_layout(m_i + gl.log2(l_i), gl.SliceLayout(1, io_layout))
                gl.store(part_lse_ptr + part, lse, mask=rows < QUERIES_PER_KV)

    @gluon.jit(do_not_specialize=["split_len", "table_width", "stride_bt"])
    def _decode_hopper_kernel(
        q_ptr, k_desc, v_desc, block_tables_ptr, context_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
        qk_scale_log2, split_len, table_width,
        stride_qs, stride_qh, stride_os, stride_oh, stride_bt, stride_ps, stride_ph, stride_pk,
        QUERIES_PER_KV: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, BOX_ROWS: gl.constexpr,
        PAGE_SIZE: gl.constexpr, STAGES: gl.constexpr, DIRECT: gl.constexpr, Q_LAYOUT: gl.constexpr,
        PDL: gl.constexpr, IN_FLIGHT: gl.constexpr,
    ):
        """k_desc, v_desc: the caches as [num_blocks * PAGE_SIZE, num_kv_heads * HEAD_DIM] in [BOX_ROWS, HEAD_DIM]
        boxes. Grid: (num_seqs, num_kv_heads, num_splits); split_len is a multiple of BLOCK_N."""
        dtype: gl.constexpr = k_desc.dtype
        q_smem = gl.allocate_shared_memory(dtype, [_QUERY_ROWS, HEAD_DIM], Q_LAYOUT)
        k_smem, v_smem, k_ready, v_ready, k_empty, v_empty = kv_ring(k_desc, v_desc, STAGES, BLOCK_N, HEAD_DIM, 1)
        fence_async_shared()
        gl.thread_barrier()
        gl.warp_specialize([
            (_decode_consumer, (q_ptr, out_ptr, part_out_ptr, part_lse_ptr, q_smem, k_smem, v_smem, k_ready,
                                v_ready, k_empty, v_empty, context_lens_ptr, split_len, qk_scale_log2,
                                stride_qs, stride_qh, stride_os, stride_oh, stride_ps, stride_ph, stride_pk,
                                QUERIES_PER_KV, HEAD_DIM, BLOCK_N, STAGES, DIRECT, PDL)),
            (_decode_producer, (k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty,
                                block_tables_ptr, context_lens_ptr, stride_bt, split_len, table_width, HEAD_DIM,
                                BLOCK_N, BOX_ROWS, PAGE_SIZE, STAGES, PDL, IN_FLIGHT)),
        ], [1], [_PRODUCER_REGS])


def gluon_decode_available(device: torch.device | None) -> bool:
    """Gluon importable and an sm_90 CUDA device: the kernel can be chosen (the tensors are checked at launch)."""
    return (gluon is not None and device is not None and device.type == "cuda" and torch.cuda.is_available()
            and device_capability(device) == (9, 0))


_DECODE_REASONS: SignatureMemo[str | None] = SignatureMemo()


def gluon_decode_unsupported_reason(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                    block_n: int) -> str | None:
    """Why the Gluon decode kernel cannot serve these tensors (None when it can): Gluon missing, not an sm_90 CUDA
    device, a layout the TMA copies cannot address, or more query heads per kv head than one wgmma has rows.
    Decided once per (gluon_layout_signature, block_n)."""
    return _DECODE_REASONS.get((gluon_layout_signature(q, key_cache, value_cache), block_n),
                               lambda: _gluon_decode_unsupported_reason(q, key_cache, value_cache, block_n))


def _gluon_decode_unsupported_reason(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                     block_n: int) -> str | None:
    reason = gluon_layout_unsupported_reason(q, key_cache, value_cache)
    if reason is not None:
        return reason
    group = q.shape[1] // key_cache.shape[2]
    if group > QUERY_ROWS:
        return f"at most {QUERY_ROWS} query heads per kv head, got {group}"
    if block_n not in (64, 128):
        return f"block_n must be 64 or 128, got {block_n}"
    return None


def launch_gluon_decode(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    out: torch.Tensor,
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    qk_scale_log2: float,
    split_len: int,
    num_splits: int,
    block_n: int,
    stages: int,
    pdl: bool = False,
    in_flight: int = 0,
) -> None:
    """The split kernel's launch for paged_decode_attention, which checked the arguments and
    gluon_decode_unsupported_reason. part_out [num_seqs, num_heads, num_splits, head_dim] and part_lse [num_seqs,
    num_heads, num_splits] (fp32) are written when num_splits > 1 (the caller then merges), out otherwise. pdl:
    launched as a programmatic dependent launch (the caller checked the device supports it). in_flight:
    DecodeConfig's field."""
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    box_rows = min(block_size, block_n)
    k_desc, v_desc = cache_descriptor(key_cache, box_rows), cache_descriptor(value_cache, box_rows)
    _decode_hopper_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_desc, v_desc, block_tables, context_lens, out, part_out, part_lse, qk_scale_log2, split_len,
        block_tables.shape[1], q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        num_heads * num_splits, num_splits, 1,
        QUERIES_PER_KV=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_N=block_n, BOX_ROWS=box_rows,
        PAGE_SIZE=block_size, STAGES=stages, DIRECT=num_splits == 1, IN_FLIGHT=in_flight or stages,
        Q_LAYOUT=shared_layout((QUERY_ROWS, head_dim), q.dtype), PDL=pdl,
        num_warps=CONSUMER_WARPS, **({"launch_pdl": True} if pdl else {}),
    )
