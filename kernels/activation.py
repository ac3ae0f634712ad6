"""SiLU-and-multiply for gated MLPs (Llama, Mistral, Qwen): silu(gate) * up."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels._checks import FLOAT_DTYPES, check_inner_contiguous, check_launchable, check_tensor
from kernels.dependent_launch import dependent_launch, dependent_start, launch_options


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, d, stride_x, stride_o, BLOCK: tl.constexpr, USE_GDC: tl.constexpr):
    dependent_start(USE_GDC)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _check_args(x: torch.Tensor) -> int:
    check_tensor("x", x, 2, FLOAT_DTYPES)
    if x.shape[1] % 2 != 0:
        raise ValueError(f"x must have an even last dimension (gate then up), got {x.shape[1]}")
    check_inner_contiguous("x", x)
    return x.shape[1] // 2


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [num_tokens, 2 * d], gate first then up. Returns [num_tokens, d] = silu(gate) * up."""
    d = _check_args(x)
    check_launchable(x.device)
    out = torch.empty((x.shape[0], d), dtype=x.dtype, device=x.device)
    if x.shape[0] > 0 and d > 0:
        block = min(4096, triton.next_power_of_2(d))
        dependent = dependent_launch(x.device)
        _silu_and_mul_kernel[(x.shape[0], triton.cdiv(d, block))](
            x, out, d, x.stride(0), out.stride(0), BLOCK=block, USE_GDC=dependent, num_warps=4,
            **launch_options(dependent),
        )
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Plain torch version of silu_and_mul (fp32 math, input dtype out)."""
    d = _check_args(x)
    xf = x.float()
    return (F.silu(xf[:, :d]) * xf[:, d:]).to(x.dtype)
