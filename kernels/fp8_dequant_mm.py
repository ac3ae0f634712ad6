"""Linear layer on FP8 weights for up to a few dozen rows: the weight tiles widen to x's dtype in registers and
multiply on tensor cores, so activations stay unquantised and only the weights' bytes are read.

A decode step of a small batch is bound by the bytes of its weights. Each program owns BLOCK_N output channels and
walks K in tiles of BLOCK_K; Triton's software pipeline keeps num_stages weight tiles in flight per program (the
loads feed the dot, so they stream through shared memory), which is what a bandwidth-bound step needs. x is padded
to BLOCK_M (at least 16) rows by masked loads; the padding rows cost tensor-core time only. float8_e4m3fn values
are exact in bf16, fp16 and fp32, so the only rounding is the fp32 accumulation, and the per-output-channel scale
is applied once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._paged_tile import dot_precision
from kernels.fp8_gemv import fp8_linear_output

MAX_BLOCK_M = 64


@dataclass(frozen=True, slots=True)
class DequantMMConfig:
    """Tile sizes and pipelining of one launch (0: the default for the shapes, see `dequant_mm_tiles`)."""

    block_n: int = 0
    block_k: int = 0
    num_stages: int = 0
    num_warps: int = 4
    target_programs: int = 2 * 132  # about two programs per SM of an H100/H200


@triton.jit
def _fp8_dequant_mm_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_om,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # One program per (BLOCK_M rows of x, BLOCK_N output channels): acc [BLOCK_M, BLOCK_N] fp32 over all of K.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
    # The weight tile as the dot's [BLOCK_K, BLOCK_N] operand, read along its contiguous K.
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            w = tl.load(w_ptrs, mask=n_mask[None, :], other=0.0)
        else:
            k_mask = (k_start + offs_k) < K
            x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(x, w.to(x_ptr.dtype.element_ty), acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    y = acc * scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def dequant_mm_tiles(m: int, n: int, k: int, cfg: DequantMMConfig) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_stages) of a launch for x [m, k] and weight [n, k]. Defaults: the widest of
    64, 32, 16 channels per program that still gives `target_programs` programs; weight tiles of 8 to 16 KB per
    stage; four stages for up to 16 rows, three past (the x tiles grow with the rows)."""
    block_m = min(MAX_BLOCK_M, max(16, triton.next_power_of_2(max(m, 1))))
    block_n = cfg.block_n
    if not block_n:
        block_n = 16
        for width in (64, 32):
            if triton.cdiv(n, width) * triton.cdiv(m, block_m) >= cfg.target_programs:
                block_n = width
                break
    block_k = cfg.block_k or (256 if block_n >= 64 else 512)
    block_k = max(16, min(block_k, triton.next_power_of_2(k)))
    num_stages = cfg.num_stages or (4 if block_m <= 16 else 3)
    return block_m, block_n, block_k, num_stages


def fp8_dequant_mm(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    config: DequantMMConfig | None = None,
) -> torch.Tensor:
    """x [M, K] (fp32/fp16/bf16), weight [N, K] float8_e4m3fn, weight_scale [N] fp32, bias [N] → [M, N] in x's
    dtype: x · (weight · weight_scale[:, None])ᵀ + bias, products of x with the widened weights summed in fp32.
    Any M (in tiles of up to 64 rows); meant for the few rows of a decode step. Never syncs with the host."""
    m, n, k, out = fp8_linear_output(x, weight, weight_scale, bias, out)
    if m == 0 or n == 0:
        return out
    cfg = config or DequantMMConfig()
    block_m, block_n, block_k, num_stages = dequant_mm_tiles(m, n, k, cfg)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _fp8_dequant_mm_kernel[grid](
        x, weight, weight_scale, bias if bias is not None else weight_scale, out,
        m, n, k, x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
        DOT_PRECISION=dot_precision(x.dtype), num_warps=cfg.num_warps, num_stages=num_stages,
    )
    return out
