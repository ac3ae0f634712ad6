"""Fused RMSNorm with an optional residual add, rounded the way Hugging Face's LlamaRMSNorm rounds."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._checks import (
    FLOAT_DTYPES,
    check_inner_contiguous,
    check_launchable,
    check_like,
    check_same_device,
    check_tensor,
)
from kernels.dependent_launch import dependent_launch, dependent_start, launch_options


@triton.jit(do_not_specialize=["num_rows"])
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr,
    num_rows, hidden, eps,
    stride_x, stride_r, stride_o, stride_s,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    USE_GDC: tl.constexpr,
):
    dependent_start(USE_GDC)
    # A [BLOCK_ROWS, BLOCK_H] tile: several short rows per program (Qwen3's per-head norm has hidden = head_dim).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows < num_rows)[:, None] & (cols < hidden)[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # The sum is rounded to the input dtype first, as `x + residual` in torch would be.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + rows[:, None] * stride_s + cols[None, :], x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / hidden + eps)
    normed = (xf * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    y = w[None, :] * normed
    tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _check_args(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None,
                summed_out: torch.Tensor | None = None) -> None:
    check_tensor("x", x, 2, FLOAT_DTYPES)
    check_tensor("weight", weight, 1, FLOAT_DTYPES)
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[0]} elements but x has hidden size {x.shape[1]}")
    check_inner_contiguous("x", x)
    check_inner_contiguous("weight", weight)
    if residual is not None:
        check_like("residual", residual, x)
    check_same_device(x=x, weight=weight)
    if summed_out is not None:
        if residual is None:
            raise ValueError("summed_out needs a residual: without one there is no sum to write")
        check_like("summed_out", summed_out, x)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    summed_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x, residual: [num_tokens, hidden]; weight: [hidden]. Returns weight * normalize(x) (x + residual when a
    residual is given, then also returns that sum). summed_out: where the sum goes instead of a new tensor (it may be
    the residual itself: each row is read whole before its sum is written)."""
    _check_args(x, weight, residual, summed_out)
    check_launchable(x.device)
    num_rows, hidden = x.shape
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if residual is None:
        summed = out
    else:
        summed = torch.empty_like(x) if summed_out is None else summed_out
    block_h = triton.next_power_of_2(hidden)
    block_rows = max(1, min(64, 4096 // block_h, triton.next_power_of_2(max(num_rows, 1))))
    if num_rows > 0:
        res = residual if residual is not None else x
        dependent = dependent_launch(x.device)
        _rms_norm_kernel[(triton.cdiv(num_rows, block_rows),)](
            x, res, weight, out, summed,
            num_rows, hidden, float(eps),
            x.stride(0), res.stride(0), out.stride(0), summed.stride(0),
            HAS_RESIDUAL=residual is not None, BLOCK_ROWS=block_rows, BLOCK_H=block_h, USE_GDC=dependent,
            num_warps=8 if block_h >= 4096 else 4, **launch_options(dependent),
        )
    return (out, summed) if residual is not None else out


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    summed_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain torch version of rms_norm (Hugging Face LlamaRMSNorm rounding)."""
    _check_args(x, weight, residual, summed_out)
    summed = torch.add(x, residual, out=summed_out) if residual is not None else x
    xf = summed.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * normed.to(x.dtype)
    return (out, summed) if residual is not None else out
