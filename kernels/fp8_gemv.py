"""Small-batch linear layer on FP8 weights: y = x · (W · s)ᵀ + b, W dequantised in registers.

A decode step of a few sequences is bound by the bytes of the weights it reads; stored as float8_e4m3fn with one
fp32 scale per output channel, those bytes halve against bf16. Each program reads BLOCK_N whole weight rows once,
for every row of x (x is a few KB and stays in cache), so no fp8 tensor-core path and no activation quantisation
are needed: products are accumulated in fp32 and the channel scale is applied once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class GemvConfig:
    """Tile sizes of one launch. block_n: 0 picks the widest of 32, 16, 8, 4 weight rows per program that still
    gives every SM about four programs (narrow outputs such as o_proj would otherwise leave SMs idle)."""

    block_n: int = 0
    block_k: int = 0  # 0: a [block_m, block_n, block_k] product of 4096 elements (about 32 fp32 registers a thread)
    num_warps: int = 4
    target_programs: int = 4 * 132


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_om,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # One program per (BLOCK_N output channels, BLOCK_M rows of x); partial products stay element-wise in
    # registers across the K loop and are summed once at the end.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        if EVEN_K:
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None], other=0.0)
            x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None], other=0.0)
        else:
            k_mask = offs_k < K
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        # [BLOCK_M, 1, BLOCK_K] * [1, BLOCK_N, BLOCK_K]
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    y = tl.sum(acc, axis=2) * scale[None, :]  # [BLOCK_M, BLOCK_N]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


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


def gemv_tiles(m: int, n: int, k: int, cfg: GemvConfig) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of a launch for x [m, k] and weight [n, k]."""
    block_m = triton.next_power_of_2(max(m, 1))
    block_n = cfg.block_n
    if not block_n:
        block_n = 4
        for width in (32, 16, 8):
            if triton.cdiv(n, width) * triton.cdiv(m, block_m) >= cfg.target_programs:
                block_n = width
                break
    block_k = cfg.block_k or max(16, 4096 // (block_m * block_n))
    return block_m, block_n, min(block_k, triton.next_power_of_2(k))


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
    dtype: x · (weight · weight_scale[:, None])ᵀ + bias, accumulated in fp32. Meant for M up to about 16."""
    m, n, k, out = fp8_linear_output(x, weight, weight_scale, bias, out)
    if m == 0 or n == 0:
        return out
    cfg = config or GemvConfig()
    block_m, block_n, block_k = gemv_tiles(m, n, k, cfg)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _fp8_gemv_kernel[grid](
        x, weight, weight_scale, bias if bias is not None else weight_scale, out,
        m, n, k, x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
        num_warps=cfg.num_warps,
    )
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
