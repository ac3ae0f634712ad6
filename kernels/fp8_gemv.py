"""Small-batch linear layer on FP8 weights, split along K: y = x · (W · s)ᵀ + b for the few rows of a decode step.

A decode step of a few sequences is bound by the bytes of its weights; stored as float8_e4m3fn with one fp32 scale
per output channel, those bytes halve against bf16. To stream them at the device's bandwidth every SM needs several
programs with loads in flight, and the output alone (N / BLOCK_N tiles) gives too few of them for the projections
of an 8B model, so K is split too: the grid is (M tiles, N tiles, K splits), each program reading a
[BLOCK_N, K / splits] slice of W once for the rows of its M tile (x is a few KB and stays in cache). x is
quantised on the FP8-products path only; products are summed in fp32 and the scales are applied once at the end. A
program multiplies one of three ways:

* CUDA cores (one row of x per program; the programs of the other rows read the same weight tile beside it, from
  the L2): x broadcast against the weight tile widened to fp32, products summed in runs of 8 within each thread
  and across threads once at the end of the slice;
* tensor cores (more rows): the weight tile widened to x's dtype (float8_e4m3fn values are exact in bf16, fp16
  and fp32) and tl.dot with x padded to 16 rows by masked loads;
* FP8 products (GemvConfig.fp8_products, for tens of rows): x first rounded to float8_e4m3fn with one scale per
  row, as torch._scaled_mm's per-token path rounds it, and tl.dot of the two FP8 tiles as they were loaded; the
  row scale is applied with the channel scale at the end.

A gated MLP's gate/up weight [2D, K] can also give silu(gate) * up directly (`fp8_gemv_silu_and_mul`), where the
plan is unsplit on CUDA cores: each program reads its channels' gate and up rows interleaved in one tile.

Splits combine deterministically in the same launch: each stores its fp32 partial tile in a workspace
[splits, M, N], then adds one to an atomic counter of its output tile; the program that finds every other split
arrived sums the partials in split order 0, 1, ... (the same order whichever program arrives last, so results are
bit-identical run to run), applies the scale and bias, writes y and sets the counter back to 0 for the next launch.
A second reduction kernel would be simpler but would add a launch, and a graph node, to every projection of a step.
Launches that share a device's counters must run in stream order (one stream, or streams that wait on each other).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels._checks import (
    FLOAT_DTYPES,
    FP8_DTYPE,
    check_inner_contiguous,
    check_launchable,
    check_same_device,
    check_tensor,
)
from kernels._paged_tile import dot_precision
from kernels.dependent_launch import dependent_launch, dependent_start, launch_options
from kernels.fp8_quant import quantize_fp8_rows
from kernels.launch_memo import register_memo, sm_count

DOT_MIN_ROWS = 3  # from this many rows the tensor-core path is the default
# Default programs per SM by path (the H200 sweep of bench/fp8.py --sweep-rows chose them).
CUDA_CORE_PROGRAMS_PER_SM = 4
# One row on CUDA cores: 8 x 1024 weight tiles (8 KB, as 16 x 512) and about 2 programs per SM, which leaves most
# projections of an 8B model unsplit, without the partials and the last-arriving reduction (the H200's one-row
# sweep of each shape).
ONE_ROW_BLOCK_N, ONE_ROW_BLOCK_K, ONE_ROW_PROGRAMS_PER_SM = 8, 1024, 2
TENSOR_CORE_PROGRAMS_PER_SM = 8
FP8_PRODUCTS_PROGRAMS_PER_SM = 4  # the H200 sweep at 32 to 256 rows (bench/fp8.py --sweep-rows)
CUDA_CORE_VECTOR = 16  # 16-byte weight loads (the same sweep)
DOT_BLOCK_M = 16  # rows of x per tensor-core tile (the smallest tl.dot takes)
MAX_SPLIT_K = 16
FMA_VECTORS = (8, 16)
INTERPRETED_SMS = 4  # the SM count the default plan assumes off CUDA (the interpreter runs programs one by one)


@dataclass(frozen=True, slots=True)
class GemvConfig:
    """How a launch tiles the product; a 0 (or None) field is picked by `gemv_plan` from the shapes and SM count.

    block_n, block_k: the weight tile per loop iteration. split_k: K splits (capped at the number of K tiles, and
    lowered so that no split is empty). use_dot: tensor cores or CUDA cores. programs_per_sm: the default split
    count gives the grid about this many programs per SM (0: the path's default). CUDA cores only: vector, the run of
    K each thread loads and sums within itself (8 or 16 weight bytes)."""

    block_m: int = 0  # tensor cores only: rows of x per tile (16, the smallest tl.dot takes, or more)
    block_n: int = 0
    block_k: int = 0
    split_k: int = 0
    use_dot: bool | None = None
    num_warps: int = 4
    num_stages: int = 0
    programs_per_sm: int = 0
    vector: int = 0
    fp8_products: bool = False  # tensor cores on x rounded to FP8 per row (block_m 16 to 64 by the rows)

    def __post_init__(self) -> None:
        if self.vector not in (0, *FMA_VECTORS):
            raise ValueError(f"GemvConfig.vector must be one of {FMA_VECTORS} (0: the default), got {self.vector}")
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if value < 0 or value & (value - 1):
                raise ValueError(f"GemvConfig.{name} must be a power of 2 (0: the default), got {value}")
        if self.split_k < 0 or self.num_stages < 0 or self.num_warps < 1 or self.programs_per_sm < 0:
            raise ValueError(f"GemvConfig fields out of range: {self}")


class GemvPlan(NamedTuple):
    """Everything a launch is compiled and gridded by, for x [m, k] and weight [n, k]."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int
    k_per_split: int  # a multiple of block_k; the last split may be shorter
    use_dot: bool
    num_warps: int
    num_stages: int
    vector: int = 8  # CUDA cores: K run per thread
    fp8_products: bool = False


@functools.cache
def gemv_plan(m: int, n: int, k: int, num_sms: int, cfg: GemvConfig = GemvConfig()) -> GemvPlan:
    """The tiles and split of a launch. Defaults: on tensor cores 16 x 32 x 256 tiles (an 8 KB weight tile per
    stage, three stages) and about 8 programs per SM; on CUDA cores one row of x and a 16 x 512 weight tile (8 KB)
    per program and iteration, and about 4 programs per SM (8 x 1024 and 2 when x has one row); then the fewest K
    splits that give that many."""
    use_dot = cfg.fp8_products or (cfg.use_dot if cfg.use_dot is not None else m >= DOT_MIN_ROWS)
    if cfg.fp8_products:
        # One tile of rows up to 64 (a Hopper wgmma's height); FP8 dots take K in multiples of 32.
        block_m = cfg.block_m or min(64, max(DOT_BLOCK_M, triton.next_power_of_2(m)))
        block_n = max(16, cfg.block_n or 64)
        block_k = max(32, cfg.block_k or 256)
    elif use_dot:
        block_m = max(DOT_BLOCK_M, cfg.block_m)
        block_n = max(16, cfg.block_n or 32)  # tl.dot's smallest N
        block_k = cfg.block_k or 256
    else:
        block_m = 1
        block_n = cfg.block_n or (ONE_ROW_BLOCK_N if m == 1 else 16)
        block_k = cfg.block_k or (ONE_ROW_BLOCK_K if m == 1 else 512)
    block_k = max(32 if cfg.fp8_products else 16, min(block_k, triton.next_power_of_2(k)))
    k_tiles = triton.cdiv(max(k, 1), block_k)
    split = cfg.split_k
    if not split:
        tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
        path_default = (FP8_PRODUCTS_PROGRAMS_PER_SM if cfg.fp8_products else TENSOR_CORE_PROGRAMS_PER_SM if use_dot
                        else ONE_ROW_PROGRAMS_PER_SM if m == 1 else CUDA_CORE_PROGRAMS_PER_SM)
        per_sm = cfg.programs_per_sm or path_default
        split = triton.cdiv(num_sms * per_sm, max(tiles, 1))
    split = max(1, min(split, MAX_SPLIT_K, k_tiles))
    tiles_per_split = triton.cdiv(k_tiles, split)
    split = triton.cdiv(k_tiles, tiles_per_split)  # no empty split
    num_stages = cfg.num_stages or 3
    vector = 8 if use_dot else min(cfg.vector or CUDA_CORE_VECTOR, block_k)
    return GemvPlan(block_m, block_n, block_k, split, tiles_per_split * block_k, use_dot, cfg.num_warps, num_stages,
                    vector, cfg.fp8_products)


register_memo(gemv_plan.cache_clear)


@triton.jit
def _fma_partial(x_row, w_ptr, offs_n, n_mask, k_begin, k_end, K, stride_wn,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, VECTOR: tl.constexpr):
    """Σ over k in [k_begin, k_end) of x[k] · W[n, k] for one row x, on CUDA cores → [BLOCK_N] fp32."""
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
    # x addressed as a [BLOCK_N, BLOCK_K] tile of equal rows and both tiles read in runs of VECTOR along K: the two
    # loads then share one layout, so the product needs no exchange through shared memory (and each thread
    # loads its VECTOR values of x once).
    x_rows = x_row + 0 * offs_n[:, None]  # [BLOCK_N, 1]
    acc = tl.zeros([BLOCK_N, BLOCK_K // VECTOR], dtype=tl.float32)  # sums of runs of VECTOR, within a thread
    for k_start in range(k_begin, k_end, BLOCK_K):
        k = tl.max_contiguous(k_start + offs_k, VECTOR)
        if EVEN_K:
            w = tl.load(w_rows + k[None, :], mask=n_mask[:, None], other=0.0, eviction_policy="evict_first")
            x = tl.load(x_rows + k[None, :])
        else:
            w = tl.load(w_rows + k[None, :], mask=n_mask[:, None] & (k < k_end)[None, :], other=0.0,
                        eviction_policy="evict_first")
            x = tl.load(x_rows + k[None, :], mask=(k < K)[None, :], other=0.0)
        product = x.to(tl.float32) * w.to(tl.float32)  # [BLOCK_N, BLOCK_K]
        acc += tl.sum(tl.reshape(product, [BLOCK_N, BLOCK_K // VECTOR, VECTOR]), axis=2)
    return tl.sum(acc, axis=1)


@triton.jit
def _dot_partial(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, k_begin, k_end, K, stride_xm, stride_wn,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, FP8_PRODUCTS: tl.constexpr):
    """Σ over k in [k_begin, k_end) of x[m, k] · W[n, k] on tensor cores → [BLOCK_M, BLOCK_N] fp32 (unscaled x
    when x is FP8)."""
    offs_k = k_begin + tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
    # The weight tile as the dot's [BLOCK_K, BLOCK_N] operand, read along its contiguous K.
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(k_begin, k_end, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            w = tl.load(w_ptrs, mask=n_mask[None, :], other=0.0, eviction_policy="evict_first")
        else:
            k_mask = (k_start - k_begin + offs_k) < K
            x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0, eviction_policy="evict_first")
        if FP8_PRODUCTS:
            acc = tl.dot(x, w, acc)
        else:
            acc = tl.dot(x, w.to(x_ptr.dtype.element_ty), acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    return acc


@triton.jit
def _store_output(y, scale_ptr, x_scale_ptr, bias_ptr, out_ptr, offs_m, offs_n, m_mask, n_mask, stride_om,
                  HAS_BIAS: tl.constexpr, FP8_PRODUCTS: tl.constexpr):
    """out[m, n] = y[m, n] · x_scale[m] · scale[n] + bias[n] in out's dtype (x_scale: FP8 products only)."""
    scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    y = y * scale[None, :]
    if FP8_PRODUCTS:
        y = y * tl.load(x_scale_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _gated_output(x_row, w_ptr, scale_ptr, bias_ptr, out_row, pid_n, N, K, stride_wn, HAS_BIAS: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, VECTOR: tl.constexpr):
    """One row's out[n] = silu(g[n]) * u[n] for BLOCK_N / 2 channels, where g and u are the projections on weight
    rows n (gate) and N + n (up) of a [2N, K] weight, each rounded to out's dtype first as the projection's own
    output is. The weight tile keeps fp8_gemv's shape, so each row is summed in the same order as there and the
    result equals fp8_gemv followed by silu_and_mul, bit for bit."""
    # The channels' gate and up rows interleaved: [BLOCK_N / 2, 2] flattened.
    offs = tl.arange(0, BLOCK_N)
    offs_n = pid_n * (BLOCK_N // 2) + offs // 2
    rows = offs_n + (offs % 2) * N
    n_mask = offs_n < N
    y = _fma_partial(x_row, w_ptr, rows, n_mask, 0, K, K, stride_wn, BLOCK_N, BLOCK_K, EVEN_K, VECTOR)
    y = y * tl.load(scale_ptr + rows, mask=n_mask, other=0.0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)
    gate, up = tl.split(tl.reshape(y.to(out_row.dtype.element_ty).to(tl.float32), [BLOCK_N // 2, 2]))
    out_n = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    act = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_row + out_n, act.to(out_row.dtype.element_ty), mask=out_n < N)


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, scale_ptr, x_scale_ptr, bias_ptr, out_ptr, partial_ptr, counter_ptr,
    M, N, K, k_per_split, num_splits,
    stride_xm, stride_wn, stride_om, stride_split,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, VECTOR: tl.constexpr, FP8_PRODUCTS: tl.constexpr, USE_GDC: tl.constexpr,
    GATED: tl.constexpr = False,
):
    # One program per (BLOCK_M rows of x, BLOCK_N output channels, K split); the rows vary fastest, so the
    # programs of one weight tile run side by side and all but the first read it from the L2.
    # A dependent launch: x, the workspace and the counters are the earlier kernels' until here.
    dependent_start(USE_GDC)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    if GATED:  # CUDA cores, unsplit: out [M, N] = silu(x · gate rows) * (x · up rows), weight [2N, K]
        _gated_output(x_ptr + pid_m.to(tl.int64) * stride_xm, w_ptr, scale_ptr, bias_ptr,
                      out_ptr + pid_m.to(tl.int64) * stride_om, pid_n, N, K, stride_wn, HAS_BIAS, BLOCK_N, BLOCK_K,
                      EVEN_K, VECTOR)
    else:
        if USE_DOT:
            y = _dot_partial(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, k_begin, k_end, K, stride_xm, stride_wn,
                             BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, DOT_PRECISION, FP8_PRODUCTS)
        else:  # BLOCK_M == 1
            x_row = x_ptr + pid_m.to(tl.int64) * stride_xm
            y = _fma_partial(x_row, w_ptr, offs_n, n_mask, k_begin, k_end, K, stride_wn, BLOCK_N, BLOCK_K, EVEN_K,
                             VECTOR)
            y = y[None, :]  # [1, BLOCK_N]
        if SPLIT:
            # partial [num_splits, M, N] fp32: this split's tile, then one arrival on the output tile's counter.
            tile = partial_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]  # [BLOCK_M, BLOCK_N], split 0
            mask = m_mask[:, None] & n_mask[None, :]
            tl.store(tile + pid_k.to(tl.int64) * stride_split, y, mask=mask)
            # Every warp's stores precede the one thread's release of the arrival (and, in the last program, the
            # acquire precedes every warp's loads of the other splits' tiles).
            tl.debug_barrier()
            counter = counter_ptr + pid_n * tl.num_programs(0) + pid_m
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == num_splits - 1:
                total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
                for _ in range(0, num_splits):  # split order, whichever program came last
                    total += tl.load(tile, mask=mask, other=0.0, cache_modifier=".cg")
                    tile += stride_split
                _store_output(total, scale_ptr, x_scale_ptr, bias_ptr, out_ptr, offs_m, offs_n, m_mask, n_mask,
                              stride_om, HAS_BIAS, FP8_PRODUCTS)
                tl.store(counter, 0)  # every split of this tile has arrived: none reads it again in this launch
        else:
            _store_output(y, scale_ptr, x_scale_ptr, bias_ptr, out_ptr, offs_m, offs_n, m_mask, n_mask, stride_om,
                          HAS_BIAS, FP8_PRODUCTS)


def check_fp8_linear_args(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> tuple[int, int, int]:
    """Returns (M, N, K) of x [M, K], weight [N, K] float8_e4m3fn, weight_scale [N] fp32, bias [N] or None."""
    check_tensor("x", x, 2, FLOAT_DTYPES)
    check_tensor("weight", weight, 2, (FP8_DTYPE,))
    check_tensor("weight_scale", weight_scale, 1, (torch.float32,))
    m, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(f"weight must have shape (N, {k}) for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    if weight_scale.shape[0] != n:
        raise ValueError(f"weight_scale must have shape ({n},), got {tuple(weight_scale.shape)}")
    tensors = dict(x=x, weight=weight, weight_scale=weight_scale)
    if bias is not None:
        check_tensor("bias", bias, 1, FLOAT_DTYPES)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        tensors["bias"] = bias
    check_inner_contiguous("x", x)
    check_inner_contiguous("weight", weight)
    if weight_scale.stride(0) != 1:
        raise ValueError("weight_scale must be contiguous")
    check_same_device(**tensors)
    return m, n, k


def fp8_linear_output(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
    out: torch.Tensor | None,
) -> tuple[int, int, int, torch.Tensor]:
    """The FP8 projection launchers' common start: checks the arguments and the device, and returns (M, N, K) and
    the output [M, N] in x's dtype (`out`, or a new tensor)."""
    m, n, k = check_fp8_linear_args(x, weight, weight_scale, bias)
    check_launchable(x.device)
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    return m, n, k, out


def num_sms(device: torch.device) -> int:
    """The SM count that default plans are made for (a nominal one off CUDA)."""
    return sm_count(device) if device.type == "cuda" else INTERPRETED_SMS


# Arrival counters by device, all zero between launches (each launch sets back what it counted). Never freed:
# a captured CUDA graph keeps the address it was captured with, so a larger set is added beside the old ones.
_counters: dict[torch.device, list[torch.Tensor]] = {}


def split_counters(device: torch.device, count: int) -> torch.Tensor:
    """At least `count` zeroed int32 arrival counters on `device`, allocated on first need (outside any graph
    capture: a capture would record the zeroing instead of running it)."""
    held = _counters.setdefault(device, [])
    if held and held[-1].numel() >= count:
        return held[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"fp8_gemv needs {count} split counters on {device} and may not allocate them during "
                           "CUDA graph capture: run the projection once before capturing it")
    held.append(torch.zeros(max(count, 4096), dtype=torch.int32, device=device))
    return held[-1]


def fp8_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """x [M, K] (fp32/fp16/bf16), weight [N, K] float8_e4m3fn, weight_scale [N] fp32, bias [N] → [M, N] in x's
    dtype: x · (weight · weight_scale[:, None])ᵀ + bias, accumulated in fp32, bit-identical from run to run. Any M;
    meant for up to about 16 rows, or tens with config.fp8_products (x then rounded to FP8 per row first). Never
    syncs with the host; can be captured in a CUDA graph once it ran outside one."""
    m, n, k, out = fp8_linear_output(x, weight, weight_scale, bias, out)
    if m == 0 or n == 0:
        return out
    plan = gemv_plan(m, n, k, num_sms(x.device), config or GemvConfig())
    x_scale = weight_scale  # not read
    if plan.fp8_products:
        x, x_scale = quantize_fp8_rows(x)  # [M, K] float8_e4m3fn, [M, 1] fp32
    grid = (triton.cdiv(m, plan.block_m), triton.cdiv(n, plan.block_n), plan.split_k)
    if plan.split_k > 1:
        partial = torch.empty((plan.split_k, m, n), dtype=torch.float32, device=x.device)
        counters = split_counters(x.device, grid[0] * grid[1])
    else:
        partial = counters = out  # not read
    _launch(plan, grid, n, x, weight, weight_scale, x_scale, bias, out, partial, counters)
    return out


def _launch(
    plan: GemvPlan, grid: tuple[int, int, int], n: int, x: torch.Tensor, weight: torch.Tensor,
    weight_scale: torch.Tensor, x_scale: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
    partial: torch.Tensor, counters: torch.Tensor, gated: bool = False,
) -> None:
    """_fp8_gemv_kernel by `plan` over `grid` for x [M, K] and n output channels of `out` (the weight's rows, or
    half of them when `gated`); partial and counters: the split workspace (any tensor when unsplit)."""
    m, k = x.shape
    dependent = dependent_launch(x.device)
    _fp8_gemv_kernel[grid](
        x, weight, weight_scale, x_scale, bias if bias is not None else weight_scale, out, partial, counters,
        m, n, k, plan.k_per_split, plan.split_k,
        x.stride(0), weight.stride(0), out.stride(0), m * n,
        HAS_BIAS=bias is not None, USE_DOT=plan.use_dot, SPLIT=plan.split_k > 1,
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, EVEN_K=k % plan.block_k == 0,
        DOT_PRECISION=dot_precision(out.dtype), VECTOR=plan.vector, FP8_PRODUCTS=plan.fp8_products,
        USE_GDC=dependent, GATED=gated, num_warps=plan.num_warps, num_stages=plan.num_stages,
        **launch_options(dependent),
    )


def gated_gemv_plan(m: int, n: int, k: int, num_sms: int) -> GemvPlan | None:
    """The plan of `fp8_gemv_silu_and_mul` for x [m, k] and a gate/up weight [n, k]: fp8_gemv's own default plan
    for them where it runs on CUDA cores unsplit (with tiles of at least two rows), else None: the split epilogue
    sums each output tile across programs, and a channel's gate and up sums would both have to be there."""
    plan = gemv_plan(m, n, k, num_sms)
    if n % 2 or plan.use_dot or plan.split_k != 1 or plan.block_n < 2:
        return None
    return plan


def fp8_gemv_silu_and_mul(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K], weight [2D, K] float8_e4m3fn (gate rows, then up rows), weight_scale [2D], bias [2D] → [M, D] =
    silu(gate) * up of the projection, in one launch instead of two: equal, bit for bit, to `fp8_gemv` (its default
    plan) followed by `silu_and_mul`. Only where that plan is an unsplit CUDA-core one (`gated_gemv_plan`)."""
    m, n, k = check_fp8_linear_args(x, weight, weight_scale, bias)
    check_launchable(x.device)
    plan = gated_gemv_plan(m, n, k, num_sms(x.device))
    if plan is None:
        raise ValueError(f"fp8_gemv_silu_and_mul needs an even N and an unsplit CUDA-core plan for x [{m}, {k}] and "
                         f"weight [{n}, {k}]; run fp8_gemv and silu_and_mul instead")
    d = n // 2
    if out is None:
        out = torch.empty((m, d), dtype=x.dtype, device=x.device)
    if m == 0 or d == 0:
        return out
    # One program per row and BLOCK_N / 2 channels (each reading their gate and up rows); no split workspace.
    _launch(plan, (m, triton.cdiv(d, plan.block_n // 2), 1), d, x, weight, weight_scale, weight_scale, bias, out,
            out, out, gated=True)
    return out


def fp8_gemv_ref(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain torch version of fp8_gemv, the dequantised reference: fp32 x · (weight · scale)ᵀ + bias."""
    check_fp8_linear_args(x, weight, weight_scale, bias)
    y = (x.float() @ weight.float().t()) * weight_scale  # [M, N]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
