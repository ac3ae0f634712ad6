"""The one place that picks Triton kernels (CUDA) or their torch references (CPU) for the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import kernels
from kernels.argmax import argmax_rows, argmax_rows_ref
from kernels.fp8_linear import (
    fp8_linear,
    fp8_linear_ref,
    fp8_linear_silu_and_mul,
    fp8_linear_silu_and_mul_ref,
)
from kernels.rotary_cache_write import apply_rotary_and_write_kv, apply_rotary_and_write_kv_ref


@dataclass(frozen=True, slots=True)
class Ops:
    """The kernel functions a decoder calls; signatures are those of `kernels`."""

    write_kv_cache: Callable[..., None]
    prefill_attention: Callable[..., torch.Tensor]
    decode_attention: Callable[..., torch.Tensor]
    rms_norm: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
    apply_rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]
    # Rotary on q and k fused with the cache write of k and v; returns the rotated q.
    apply_rotary_and_write_kv: Callable[..., torch.Tensor]
    argmax: Callable[..., torch.Tensor]  # [num_rows, n] → [num_rows] int64, as torch.argmax(dim=-1)
    # x [..., K], FP8 weight [N, K], fp32 scales [N], bias → [..., N]: the projections of an FP8 model.
    fp8_linear: Callable[..., torch.Tensor]
    # The same for a gated MLP's gate/up weight [2D, K], followed by silu_and_mul → [..., D].
    fp8_linear_silu_and_mul: Callable[..., torch.Tensor]
    uses_kernels: bool


KERNEL_OPS = Ops(
    write_kv_cache=kernels.write_kv_cache,
    prefill_attention=kernels.paged_prefill_attention,
    decode_attention=kernels.paged_decode_attention,
    rms_norm=kernels.rms_norm,
    apply_rotary=kernels.apply_rotary,
    silu_and_mul=kernels.silu_and_mul,
    apply_rotary_and_write_kv=apply_rotary_and_write_kv,
    argmax=argmax_rows,
    fp8_linear=fp8_linear,
    fp8_linear_silu_and_mul=fp8_linear_silu_and_mul,
    uses_kernels=True,
)
REFERENCE_OPS = Ops(
    write_kv_cache=kernels.write_kv_cache_ref,
    prefill_attention=kernels.paged_prefill_attention_ref,
    decode_attention=kernels.paged_decode_attention_ref,
    rms_norm=kernels.rms_norm_ref,
    apply_rotary=kernels.apply_rotary_ref,
    silu_and_mul=kernels.silu_and_mul_ref,
    apply_rotary_and_write_kv=apply_rotary_and_write_kv_ref,
    argmax=argmax_rows_ref,
    fp8_linear=fp8_linear_ref,
    fp8_linear_silu_and_mul=fp8_linear_silu_and_mul_ref,
    uses_kernels=False,
)


def select_ops(device: torch.device, use_kernels: bool | None = None) -> Ops:
    """Kernels on CUDA, references elsewhere; `use_kernels` overrides (tests compare the two on a GPU)."""
    if use_kernels is None:
        use_kernels = device.type == "cuda"
    return KERNEL_OPS if use_kernels else REFERENCE_OPS
