"""Triton helpers shared by the paged attention kernels: page lookup and one online-softmax step over a tile."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.launch_memo import TensorMemo, device_capability

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton without host-side tensor descriptors: the gather kernels serve every call
    TensorDescriptor = None

LOG2_E = 1.4426950408889634

# How an FP8 cache's tiles widen for the products (a constexpr of the gather kernels). WIDEN_TO_QUERY casts them to
# q's dtype: to bf16 each entry goes through fp16 and fp32. WIDEN_FP16 casts them to fp16 (one conversion per pair)
# with q in fp16; the compiler moves that cast past the tile's trip through shared memory, and V's operand layout
# then reads the FP8 entries there one byte at a time. WIDEN_FP16_IN_REGISTERS widens as loaded (inline assembly
# the compiler leaves in place), so V goes through shared memory in fp16 and is read by ldmatrix as a bf16 V is.
WIDEN_TO_QUERY = tl.constexpr(0)
WIDEN_FP16 = tl.constexpr(1)
WIDEN_FP16_IN_REGISTERS = tl.constexpr(2)
IS_INTERPRETER = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")  # the interpreter runs no assembly

# How a tile finds its pages (a constexpr of the kernels; the defaults pick one per kernel and head dim):
# VECTOR_PAGES gathers the tile's page ids as one [BLOCK_N] load; the compiler's pipeliner then turns that load
# into an asynchronous copy that shares the K/V copies' wait, which leaves K/V only one tile ahead.
# SCALAR_PAGES loads the BLOCK_N / PAGE_SIZE page ids as scalars (uniform loads the pipeliner leaves alone) and
# builds the row offsets from them with compile-time row masks (the pipeliner still copies them asynchronously).
# ASM_PAGES gathers the page ids through an inline-assembly load that the pipeliner cannot see, so the K/V loads
# count as direct loads and get the full pipelining depth; the page ids are read in the same stage as the K/V
# copies they address. Compiled targets only (the interpreter runs no assembly).
VECTOR_PAGES = 0
SCALAR_PAGES = 1
ASM_PAGES = 2


def needs_int64_offsets(*tensors: torch.Tensor) -> bool:
    """True when an element offset into one of the tensors can reach 2**31 (int32 arithmetic would wrap)."""
    return any(sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 0) >= 2**31 - 1 for t in tensors)


def resolve_page_loads(requested: int, device: torch.device) -> int:
    """The page-lookup variant to compile: the interpreter (CPU tensors) cannot run ASM_PAGES' assembly."""
    if requested not in (VECTOR_PAGES, SCALAR_PAGES, ASM_PAGES):
        raise ValueError(f"page_loads must be one of 0, 1, 2, got {requested}")
    return SCALAR_PAGES if requested == ASM_PAGES and device.type != "cuda" else requested


def supports_tma(device: torch.device) -> bool:
    """Tensor-descriptor copies need compute capability 9.0 or newer (the interpreter runs them on CPU too)."""
    if TensorDescriptor is None:
        return False
    if device.type == "cuda":
        return device_capability(device)[0] >= 9
    return device.type == "cpu"


def cache_tile_descriptors(key_cache: torch.Tensor, value_cache: torch.Tensor, block_n: int) -> tuple | None:
    """Descriptors of each cache as [num_blocks * block_size, num_kv_heads * head_dim] with [block_n, head_dim]
    boxes (tma_tile), or None where the layout does not allow whole-tile copies (the gather kernels then run)."""
    num_blocks, block_size, num_kv_heads, head_dim = key_cache.shape
    if TensorDescriptor is None or block_size % block_n or head_dim not in (64, 128, 256):
        return None
    if key_cache.dtype == torch.float8_e4m3fn:
        return None  # tma_tile multiplies tiles as they land; an FP8 cache takes the gather kernels, which widen it
    if key_cache.stride(2) != head_dim or key_cache.stride(0) != block_size * key_cache.stride(1):
        return None
    if any(t.data_ptr() % 16 for t in (key_cache, value_cache)) or (key_cache.stride(1) * key_cache.element_size()) % 16:
        return None
    # Built once per cache tensor and block_n: a worker's caches live as long as it does.
    return tuple(_TILE_DESCRIPTORS.get(c, block_n, lambda view: _tile_descriptor(view, block_n))
                 for c in (key_cache, value_cache))


_TILE_DESCRIPTORS: TensorMemo = TensorMemo()


def _tile_descriptor(cache: torch.Tensor, block_n: int) -> TensorDescriptor:
    num_blocks, block_size, num_kv_heads, head_dim = cache.shape
    return TensorDescriptor(cache, [num_blocks * block_size, num_kv_heads * head_dim], [cache.stride(1), 1],
                            [block_n, head_dim])


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tests compare with an fp32 reference); 16-bit types ignore this."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def prefetch_table_row(table_row_ptr, first_page, table_width):
    """Asks for the 128-byte line of a block-table row that holds page first_page (clamped into the row) to be
    brought into L1, without waiting: the loop's first page-id loads then hit L1. Compiled targets only."""
    page = tl.minimum(first_page, table_width - 1)
    if not IS_INTERPRETER:
        tl.inline_asm_elementwise(
            "prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [table_row_ptr + page],
            dtype=tl.int32, is_pure=False, pack=1,
        )


@triton.jit
def tile_row_offsets(
    table_row_ptr, n_start, kv_len, stride_cb, stride_cs, kv_head_offset,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, MASK_KV: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    PAGE_LOADS: tl.constexpr,
):
    """[BLOCK_N] element offsets (into a cache) of keys n_start .. n_start + BLOCK_N of one kv head.

    Key n lives at page table_row[n // PAGE_SIZE], slot n % PAGE_SIZE. n_start is a multiple of
    min(BLOCK_N, PAGE_SIZE). With MASK_KV, pages at or past kv_len are not looked up (their rows are masked).
    """
    rows = tl.arange(0, BLOCK_N)
    if PAGE_LOADS == 2:
        offs_n = n_start + rows
        if MASK_KV:
            offs_n = tl.minimum(offs_n, kv_len - 1)  # masked rows reread the last valid page id
        page = tl.inline_asm_elementwise(
            "ld.global.nc.b32 $0, [$1];", "=r,l", [table_row_ptr + offs_n // PAGE_SIZE],
            dtype=tl.int32, is_pure=True, pack=1,
        )
        if INT64_OFFSETS:
            page = page.to(tl.int64)
        return page * stride_cb + (offs_n % PAGE_SIZE) * stride_cs + kv_head_offset
    elif PAGE_LOADS == 0:
        offs_n = n_start + rows
        if MASK_KV:
            page = tl.load(table_row_ptr + offs_n // PAGE_SIZE, mask=offs_n < kv_len, other=0)
        else:
            page = tl.load(table_row_ptr + offs_n // PAGE_SIZE)
        # int64 only where page * stride_cb can pass 2**31 (a cache of more than 2**31 elements): 32-bit
        # offsets need fewer registers and integer instructions in the hot loop.
        if INT64_OFFSETS:
            page = page.to(tl.int64)
        return page * stride_cb + (offs_n % PAGE_SIZE) * stride_cs + kv_head_offset
    elif PAGE_SIZE >= BLOCK_N:
        # One page holds the whole tile: one page id, contiguous slots.
        page = tl.load(table_row_ptr + n_start // PAGE_SIZE)
        if INT64_OFFSETS:
            page = page.to(tl.int64)
        return page * stride_cb + ((n_start % PAGE_SIZE) + rows) * stride_cs + kv_head_offset
    else:
        PAGES_PER_TILE: tl.constexpr = BLOCK_N // PAGE_SIZE
        first_page = n_start // PAGE_SIZE
        if INT64_OFFSETS:
            page_of_row = tl.zeros([BLOCK_N], dtype=tl.int64)
        else:
            page_of_row = tl.zeros([BLOCK_N], dtype=tl.int32)
        for j in tl.static_range(PAGES_PER_TILE):
            if MASK_KV:
                page = tl.load(table_row_ptr + first_page + j, mask=(first_page + j) * PAGE_SIZE < kv_len, other=0)
            else:
                page = tl.load(table_row_ptr + first_page + j)
            if INT64_OFFSETS:
                page = page.to(tl.int64)
            # rows // PAGE_SIZE is known at compile time: each row takes one page id, no arithmetic per row.
            page_of_row = tl.where(rows // PAGE_SIZE == j, page, page_of_row)
        return page_of_row * stride_cb + (rows % PAGE_SIZE) * stride_cs + kv_head_offset


@triton.jit
def widen_fp8_in_registers(x):
    """An FP8 (e4m3) tile to fp16 where it was loaded (WIDEN_FP16_IN_REGISTERS), by the conversion Triton's cast
    uses. Declared impure so that the compiler neither moves nor recomputes it in the product's operand layout."""
    if IS_INTERPRETER:
        return x.to(tl.float16)
    return tl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2.e4m3x2 $0, lo; cvt.rn.f16x2.e4m3x2 $1, hi; }",
        "=r,=r,r", [x.to(tl.uint8, bitcast=True)], dtype=tl.float16, is_pure=False, pack=4,
    )


@triton.jit
def query_for_cache(q, cache_ptr, FP8_WIDEN: tl.constexpr):
    """q in the dtype the tile products run in: fp16 for a 16-bit q on an FP8 cache unless FP8_WIDEN is
    WIDEN_TO_QUERY (fp16 covers every FP8 entry; the products still accumulate in fp32), else q's own dtype (an fp32
    q keeps exact products)."""
    result = q
    if FP8_WIDEN != WIDEN_TO_QUERY:
        if cache_ptr.dtype.element_ty == tl.float8e4nv:
            if q.dtype != tl.float32:
                result = q.to(tl.float16)
    return result


@triton.jit
def online_softmax_step(s, m_i, l_i, qk_scale_log2):
    """s: [M, N] unscaled scores; returns p [M, N], the rescale factor alpha [M], and the new running max and sum.

    The scale is applied inside one fused multiply-add per score: exp2(s * scale - m)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale_log2)
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s * qk_scale_log2 - m_new[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def load_paged_tile(
    cache_ptr, ptrs, kv_valid, d_mask, MASK_KV: tl.constexpr, EVEN_D: tl.constexpr,
):
    """[BLOCK_N, D] tile of a cache at element offsets ptrs; rows outside kv_valid (with MASK_KV) read as zero."""
    if MASK_KV:
        load_mask = kv_valid[:, None]
        if not EVEN_D:
            load_mask = load_mask & d_mask[None, :]
        return tl.load(cache_ptr + ptrs, mask=load_mask, other=0.0)
    elif EVEN_D:
        return tl.load(cache_ptr + ptrs)
    else:
        return tl.load(cache_ptr + ptrs, mask=d_mask[None, :], other=0.0)


@triton.jit
def attend_paged_tile_halves(
    acc_a, m_a, l_a, q_a, pos_a, acc_b, m_b, l_b, q_b, pos_b,
    k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset,
    n_start, kv_len, qk_scale_log2,
    stride_cb, stride_cs,
    offs_d, d_mask,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, EVEN_D: tl.constexpr,
    MASK_KV: tl.constexpr, CAUSAL_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    PAGE_LOADS: tl.constexpr,
):
    """attend_paged_tile for two independent row blocks (a, b) sharing one K/V tile. Both score products are
    issued before either softmax, so the tensor cores work on b's scores while a's softmax runs."""
    row_offsets = tile_row_offsets(
        table_row_ptr, n_start, kv_len, stride_cb, stride_cs, kv_head_offset,
        BLOCK_N, PAGE_SIZE, MASK_KV, INT64_OFFSETS, PAGE_LOADS,
    )
    ptrs = row_offsets[:, None] + offs_d[None, :]  # [BLOCK_N, D]
    offs_n = n_start + tl.arange(0, BLOCK_N)
    kv_valid = offs_n < kv_len
    k = load_paged_tile(k_cache_ptr, ptrs, kv_valid, d_mask, MASK_KV, EVEN_D).to(q_a.dtype)  # FP8 caches widen here
    s_a = tl.dot(q_a, tl.trans(k), input_precision=DOT_PRECISION)
    s_b = tl.dot(q_b, tl.trans(k), input_precision=DOT_PRECISION)
    if MASK_KV:
        s_a = tl.where(kv_valid[None, :], s_a, float("-inf"))
        s_b = tl.where(kv_valid[None, :], s_b, float("-inf"))
    if CAUSAL_MASK:
        s_a = tl.where(offs_n[None, :] <= pos_a[:, None], s_a, float("-inf"))
        s_b = tl.where(offs_n[None, :] <= pos_b[:, None], s_b, float("-inf"))
    p_a, alpha_a, m_a, l_a = online_softmax_step(s_a, m_a, l_a, qk_scale_log2)
    v = load_paged_tile(v_cache_ptr, ptrs, kv_valid, d_mask, MASK_KV, EVEN_D).to(q_a.dtype)
    acc_a = tl.dot(p_a.to(v.dtype), v, acc_a * alpha_a[:, None], input_precision=DOT_PRECISION)
    p_b, alpha_b, m_b, l_b = online_softmax_step(s_b, m_b, l_b, qk_scale_log2)
    acc_b = tl.dot(p_b.to(v.dtype), v, acc_b * alpha_b[:, None], input_precision=DOT_PRECISION)
    return acc_a, m_a, l_a, acc_b, m_b, l_b


@triton.jit
def _widen_tile(x, dtype, WIDEN: tl.constexpr):
    """A loaded K or V tile in the products' dtype (query_for_cache's); WIDEN as FP8_WIDEN."""
    result = x.to(dtype)
    if WIDEN == WIDEN_FP16_IN_REGISTERS:
        if x.dtype == tl.float8e4nv:
            if dtype == tl.float16:
                result = widen_fp8_in_registers(x)
    return result


@triton.jit
def attend_paged_tile(
    acc, m_i, l_i, q,
    k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head_offset,
    n_start, kv_len, query_pos, qk_scale_log2,
    stride_cb, stride_cs,
    offs_d, d_mask,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, EVEN_D: tl.constexpr,
    MASK_KV: tl.constexpr, CAUSAL_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    PAGE_LOADS: tl.constexpr, WIDEN: tl.constexpr = 0,
):
    """acc: [M, D] fp32, m_i and l_i: [M] fp32 running max (log2 units, scaled) and sum; q: [M, D].

    The tile covers keys n_start .. n_start + BLOCK_N; with MASK_KV keys >= kv_len are dropped, with CAUSAL_MASK
    keys after each row's query_pos ([M]) are dropped. K and V share one set of row offsets.
    """
    row_offsets = tile_row_offsets(
        table_row_ptr, n_start, kv_len, stride_cb, stride_cs, kv_head_offset,
        BLOCK_N, PAGE_SIZE, MASK_KV, INT64_OFFSETS, PAGE_LOADS,
    )
    ptrs = row_offsets[:, None] + offs_d[None, :]  # [BLOCK_N, D]
    if MASK_KV:
        kv_valid = (n_start + tl.arange(0, BLOCK_N)) < kv_len
        load_mask = kv_valid[:, None]
        if not EVEN_D:
            load_mask = load_mask & d_mask[None, :]
        k = tl.load(k_cache_ptr + ptrs, mask=load_mask, other=0.0)
    elif EVEN_D:
        k = tl.load(k_cache_ptr + ptrs)
    else:
        k = tl.load(k_cache_ptr + ptrs, mask=d_mask[None, :], other=0.0)
    k = _widen_tile(k, q.dtype, WIDEN)  # an FP8 cache's scale is folded into qk_scale_log2

    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [M, BLOCK_N], unscaled
    if MASK_KV:
        s = tl.where(kv_valid[None, :], s, float("-inf"))
    if CAUSAL_MASK:
        s = tl.where((n_start + tl.arange(0, BLOCK_N))[None, :] <= query_pos[:, None], s, float("-inf"))
    p, alpha, m_new, l_i = online_softmax_step(s, m_i, l_i, qk_scale_log2)

    if MASK_KV:
        v = tl.load(v_cache_ptr + ptrs, mask=load_mask, other=0.0)
    elif EVEN_D:
        v = tl.load(v_cache_ptr + ptrs)
    else:
        v = tl.load(v_cache_ptr + ptrs, mask=d_mask[None, :], other=0.0)
    v = _widen_tile(v, q.dtype, WIDEN)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def tma_tile(
    acc, m_i, l_i, q, k_desc, v_desc, table_row_ptr, n_start, kv_col, kv_end, query_pos, qk_scale_log2,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ASM_PAGE: tl.constexpr = False,
):
    """One online-softmax step over keys n_start .. n_start + BLOCK_N, copied whole from one page. MASKED drops keys
    at or past kv_end (and after each row's query_pos with CAUSAL) and zeroes their V rows: slots past a sequence's
    context hold whatever the page held before, and p = 0 times a stale NaN would still be NaN.

    ASM_PAGE reads the page id through inline assembly (as ASM_PAGES does in tile_row_offsets). With an ordinary
    load the pipeliner stages that load too, and K/V get 1 buffer at num_stages 2-4, 2 at 5-6, 3 at 8; hidden from
    it, K/V get num_stages - 1 buffers and the page id is read (from L1: prefetch_table_row) as each copy is issued."""
    if ASM_PAGE and not IS_INTERPRETER:
        page = tl.inline_asm_elementwise(
            "ld.global.nc.b32 $0, [$1];", "=r,l", [table_row_ptr + n_start // PAGE_SIZE],
            dtype=tl.int32, is_pure=True, pack=1,
        )
    else:
        page = tl.load(table_row_ptr + n_start // PAGE_SIZE)
    row = page * PAGE_SIZE + n_start % PAGE_SIZE
    k = k_desc.load([row, kv_col])
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
    v = v_desc.load([row, kv_col])
    if MASKED:
        offs_n = n_start + tl.arange(0, BLOCK_N)
        visible = (offs_n < kv_end)[None, :]
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= query_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        v = tl.where((offs_n < kv_end)[:, None], v, 0.0)
    p, alpha, m_i, l_i = online_softmax_step(s, m_i, l_i, qk_scale_log2)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, m_i, l_i
