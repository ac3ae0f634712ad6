"""Random FP8 linear problems shared by the FP8 kernel tests."""

from __future__ import annotations

import torch

from kernels.fp8_quant import quantize_fp8_rows_ref


def fp8_weights(n: int, k: int, g: torch.Generator, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A random [n, k] weight quantised per output channel: (fp8 weight, fp32 scales [n])."""
    w, scale = quantize_fp8_rows_ref(torch.randn(n, k, generator=g) * 0.05)
    return w.to(device), scale.view(-1).to(device)


def fp8_problem(m: int, n: int, k: int, bias: bool, seed: int, device: str, dtype: torch.dtype) -> tuple:
    """x [m, k] in dtype, FP8 weight [n, k] and its scales, bias [n] or None, drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    w, scale = fp8_weights(n, k, g, device)
    x = torch.randn(m, k, generator=g).to(dtype).to(device)
    b = torch.randn(n, generator=g).to(dtype).to(device) if bias else None
    return x, w, scale, b
