"""Row-wise FP8 quantisation: each row of x becomes float8_e4m3fn values and one fp32 scale (amax / 448).

The same rule serves activations (one scale per token, computed every step before an FP8 tensor-core GEMM) and
weights (one scale per output channel, computed once when a bf16/fp16 checkpoint is quantised at load).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._checks import FLOAT_DTYPES, FP8_DTYPE, FP8_MAX, check_inner_contiguous, check_launchable, check_tensor

MIN_AMAX = 1e-12  # an all-zero row gets this amax, so its scale is positive and its values quantise to 0


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, K, stride_x, stride_q,
    FP8_MAX_VALUE: tl.constexpr, MIN_AMAX_VALUE: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program per row: a pass for the row's amax, a second (from cache) to scale, clamp and round.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        offs = k_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0), MIN_AMAX_VALUE) / FP8_MAX_VALUE
    tl.store(scale_ptr + row, scale)
    for k_start in range(0, K, BLOCK_K):
        offs = k_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        q = tl.clamp(x / scale, -FP8_MAX_VALUE, FP8_MAX_VALUE)
        tl.store(q_ptr + row * stride_q + offs, q.to(q_ptr.dtype.element_ty), mask=offs < K)


def _check_args(x: torch.Tensor) -> tuple[int, int]:
    check_tensor("x", x, 2, FLOAT_DTYPES)
    check_inner_contiguous("x", x)
    return x.shape[0], x.shape[1]


def quantize_fp8_rows(x: torch.Tensor, block_k: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] → (q [M, K] float8_e4m3fn, scale [M, 1] fp32) with q · scale ≈ x, scale = max|x_row| / 448."""
    m, k = _check_args(x)
    check_launchable(x.device)
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    block = min(block_k, triton.next_power_of_2(max(k, 1)))
    _quantize_rows_kernel[(m,)](
        x, q, scale, k, x.stride(0), q.stride(0),
        FP8_MAX_VALUE=FP8_MAX, MIN_AMAX_VALUE=MIN_AMAX, BLOCK_K=block, num_warps=4 if block <= 1024 else 8,
    )
    return q, scale


def quantize_fp8_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch version of quantize_fp8_rows (same arguments and results)."""
    _check_args(x)
    x32 = x.float()
    scale = x32.abs().amax(dim=1, keepdim=True).clamp_min(MIN_AMAX) / FP8_MAX  # [M, 1]
    q = (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale
