"""Rotary position embedding, rotate-half layout (GPT-NeoX / Hugging Face Llama), from precomputed cos/sin."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._checks import (
    FLOAT_DTYPES,
    check_inner_contiguous,
    check_launchable,
    check_same_device,
    check_tensor,
)


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, token, num_heads, stride_t, stride_h, stride_ot, stride_oh, cos, sin,
    HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_HEADS)
    cols = tl.arange(0, BLOCK_HALF)
    mask = (heads < num_heads)[:, None] & (cols < HALF)[None, :]
    src = src_ptr + token * stride_t + heads[:, None] * stride_h + cols[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = dst_ptr + token * stride_ot + heads[:, None] * stride_oh + cols[None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cos_ptr, sin_ptr,
    num_heads, num_kv_heads,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh, stride_cos, stride_sin,
    HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_KV_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    # One program per token: every q and k head of the token shares one row of cos/sin.
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)
    cos = tl.load(cos_ptr + pos * stride_cos + cols, mask=cols < HALF, other=0.0)[None, :]
    sin = tl.load(sin_ptr + pos * stride_sin + cols, mask=cols < HALF, other=0.0)[None, :]
    _rotate_heads(q_ptr, q_out_ptr, token, num_heads, stride_qt, stride_qh, stride_qot, stride_qoh, cos, sin,
                  HALF, BLOCK_HEADS, BLOCK_HALF)
    _rotate_heads(k_ptr, k_out_ptr, token, num_kv_heads, stride_kt, stride_kh, stride_kot, stride_koh, cos, sin,
                  HALF, BLOCK_KV_HEADS, BLOCK_HALF)


def _check_args(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    check_tensor("q", q, 3, FLOAT_DTYPES)
    check_tensor("k", k, 3, (q.dtype,))
    check_tensor("positions", positions, 1, (torch.int64, torch.int32))
    check_tensor("cos", cos, 2, (torch.float32,))
    check_tensor("sin", sin, 2, (torch.float32,))
    num_tokens, _, head_dim = q.shape
    if head_dim % 2 != 0:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    if k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(f"k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)}")
    if positions.shape[0] != num_tokens:
        raise ValueError(f"positions has {positions.shape[0]} entries for {num_tokens} tokens")
    if cos.shape != sin.shape or cos.shape[1] != head_dim // 2:
        raise ValueError(
            f"cos and sin must both be [max_position, {head_dim // 2}], got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_inner_contiguous(name, t)
    check_same_device(q=q, k=k, positions=positions, cos=cos, sin=sin)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [num_tokens, num_heads, head_dim], k: [num_tokens, num_kv_heads, head_dim], positions: [num_tokens],
    cos/sin: [max_position, head_dim // 2] fp32. Returns new rotated (q, k); positions must be < max_position."""
    _check_args(q, k, positions, cos, sin)
    check_launchable(q.device)
    q_out, k_out = torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format
    )
    num_tokens, num_heads, head_dim = q.shape
    if num_tokens > 0:
        _rotary_kernel[(num_tokens,)](
            q, k, q_out, k_out, positions, cos, sin,
            num_heads, k.shape[1],
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1), cos.stride(0), sin.stride(0),
            HALF=head_dim // 2,
            BLOCK_HEADS=triton.next_power_of_2(num_heads),
            BLOCK_KV_HEADS=triton.next_power_of_2(k.shape[1]),
            BLOCK_HALF=triton.next_power_of_2(head_dim // 2),
            num_warps=4,
        )
    return q_out, k_out


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def apply_rotary_ref(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch version of apply_rotary (returns new tensors)."""
    _check_args(q, k, positions, cos, sin)
    # [num_tokens, 1, head_dim // 2]: broadcast over heads.
    c, s = cos[positions.long()][:, None, :], sin[positions.long()][:, None, :]
    return _rotate_ref(q, c, s), _rotate_ref(k, c, s)
