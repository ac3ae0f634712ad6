"""Rotary embedding of q and k fused with the paged KV-cache write of the rotated k and of v.

One launch instead of two (`apply_rotary`, then `write_kv_cache`): the rotated keys go straight from registers
into their cache slots and never exist as a tensor. The arithmetic and its rounding are those of the two
kernels it replaces (rotate in fp32, round to the input dtype, then to the cache dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._checks import (
    FLOAT_DTYPES,
    FP8_DTYPE,
    check_inner_contiguous,
    check_kv_cache,
    check_like,
    check_launchable,
    check_same_device,
    check_shape,
    check_tensor,
)
from kernels.cache_write import cache_value, write_kv_cache_ref
from kernels.dependent_launch import dependent_launch, dependent_start, launch_options
from kernels.rotary import apply_rotary_ref


@triton.jit
def _rotary_cache_write_kernel(
    q_ptr, k_ptr, v_ptr, q_out_ptr, key_cache_ptr, value_cache_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr,
    num_heads, num_kv_heads, block_size,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_qot, stride_qoh,
    stride_cb, stride_cs, stride_ch, stride_cos, stride_sin, k_inv_scale, v_inv_scale,
    HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_KV_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr,
    FP8: tl.constexpr, USE_GDC: tl.constexpr,
):
    dependent_start(USE_GDC)
    # One program per token: its q heads to q_out, its k heads (rotated) and v heads to the token's cache slot.
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)
    col_mask = cols < HALF
    cos = tl.load(cos_ptr + pos * stride_cos + cols, mask=col_mask, other=0.0)[None, :]
    sin = tl.load(sin_ptr + pos * stride_sin + cols, mask=col_mask, other=0.0)[None, :]

    heads = tl.arange(0, BLOCK_HEADS)
    mask = (heads < num_heads)[:, None] & col_mask[None, :]
    q_src = q_ptr + token * stride_qt + heads[:, None] * stride_qh + cols[None, :]
    x1 = tl.load(q_src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(q_src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = q_out_ptr + token * stride_qot + heads[:, None] * stride_qoh + cols[None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(q_out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(q_out_ptr.dtype.element_ty), mask=mask)

    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        kv_heads = tl.arange(0, BLOCK_KV_HEADS)
        kv_mask = (kv_heads < num_kv_heads)[:, None] & col_mask[None, :]
        # int64: block_id * stride_cb exceeds 2**31 once the cache holds more than 2**31 elements.
        cache = (slot // block_size) * stride_cb + (slot % block_size) * stride_cs
        cache_off = cache + kv_heads[:, None] * stride_ch + cols[None, :]  # [BLOCK_KV_HEADS, BLOCK_HALF]
        k_src = k_ptr + token * stride_kt + kv_heads[:, None] * stride_kh + cols[None, :]
        k1 = tl.load(k_src, mask=kv_mask, other=0.0).to(tl.float32)
        k2 = tl.load(k_src + HALF, mask=kv_mask, other=0.0).to(tl.float32)
        # Rounded to k's dtype first, as the rotary kernel's output would be before the cache write.
        r1 = cache_value((k1 * cos - k2 * sin).to(k_ptr.dtype.element_ty), k_inv_scale, key_cache_ptr, FP8)
        r2 = cache_value((k2 * cos + k1 * sin).to(k_ptr.dtype.element_ty), k_inv_scale, key_cache_ptr, FP8)
        tl.store(key_cache_ptr + cache_off, r1, mask=kv_mask)
        tl.store(key_cache_ptr + cache_off + HALF, r2, mask=kv_mask)
        v_src = v_ptr + token * stride_vt + kv_heads[:, None] * stride_vh + cols[None, :]
        v1 = tl.load(v_src, mask=kv_mask, other=0.0)
        v2 = tl.load(v_src + HALF, mask=kv_mask, other=0.0)
        tl.store(value_cache_ptr + cache_off, cache_value(v1, v_inv_scale, value_cache_ptr, FP8), mask=kv_mask)
        tl.store(value_cache_ptr + cache_off + HALF, cache_value(v2, v_inv_scale, value_cache_ptr, FP8),
                 mask=kv_mask)


def _check_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    q_out: torch.Tensor | None,
) -> None:
    check_tensor("q", q, 3, FLOAT_DTYPES)
    check_tensor("k", k, 3, (q.dtype,))
    check_tensor("v", v, 3, (q.dtype,))
    check_tensor("positions", positions, 1, (torch.int64, torch.int32))
    check_tensor("slot_mapping", slot_mapping, 1, (torch.int64, torch.int32))
    check_tensor("cos", cos, 2, (torch.float32,))
    check_tensor("sin", sin, 2, (torch.float32,))
    _, _, num_kv_heads, head_dim = check_kv_cache(key_cache, value_cache)
    num_tokens = q.shape[0]
    if q.shape[2] != head_dim or head_dim % 2 != 0:
        raise ValueError(f"q head_dim {q.shape[2]} must equal the cache's {head_dim} and be even")
    check_shape("k", k, (num_tokens, num_kv_heads, head_dim))
    check_shape("v", v, (num_tokens, num_kv_heads, head_dim))
    check_shape("positions", positions, (num_tokens,))
    check_shape("slot_mapping", slot_mapping, (num_tokens,))
    if cos.shape != sin.shape or cos.shape[1] != head_dim // 2:
        raise ValueError(
            f"cos and sin must both be [max_position, {head_dim // 2}], got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    for name, t in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin)):
        check_inner_contiguous(name, t)
    check_same_device(q=q, k=k, v=v, positions=positions, cos=cos, sin=sin, key_cache=key_cache,
                      value_cache=value_cache, slot_mapping=slot_mapping)
    if q_out is not None:
        check_like("q_out", q_out, q)


def apply_rotary_and_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    q_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim]; positions and
    slot_mapping: [num_tokens] (slot = block_id * block_size + offset, negative = no write); cos/sin:
    [max_position, head_dim // 2] fp32; caches: [num_blocks, block_size, num_kv_heads, head_dim].
    Returns the rotated q (a new tensor, or q_out when given: q's shape and dtype, unit stride on head_dim) and
    stores the rotated k and v at their slots (an FP8 cache: divided by k_scale and v_scale, as write_kv_cache
    stores them)."""
    _check_args(q, k, v, positions, cos, sin, key_cache, value_cache, slot_mapping, q_out)
    check_launchable(q.device)
    if q_out is None:
        q_out = torch.empty_like(q, memory_format=torch.contiguous_format)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if num_tokens > 0:
        dependent = dependent_launch(q.device)
        _rotary_cache_write_kernel[(num_tokens,)](
            q, k, v, q_out, key_cache, value_cache, positions, slot_mapping, cos, sin,
            num_heads, num_kv_heads, key_cache.shape[1],
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            q_out.stride(0), q_out.stride(1),
            key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), cos.stride(0), sin.stride(0),
            1.0 / k_scale, 1.0 / v_scale,
            HALF=head_dim // 2, FP8=key_cache.dtype == FP8_DTYPE,
            BLOCK_HEADS=triton.next_power_of_2(num_heads),
            BLOCK_KV_HEADS=triton.next_power_of_2(num_kv_heads),
            BLOCK_HALF=triton.next_power_of_2(head_dim // 2), USE_GDC=dependent,
            num_warps=4, **launch_options(dependent),
        )
    return q_out


def apply_rotary_and_write_kv_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    q_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch version of apply_rotary_and_write_kv: the two references it fuses, one after the other."""
    _check_args(q, k, v, positions, cos, sin, key_cache, value_cache, slot_mapping, q_out)
    q_rot, k_rot = apply_rotary_ref(q, k, positions, cos, sin)
    write_kv_cache_ref(k_rot, v, key_cache, value_cache, slot_mapping, k_scale=k_scale, v_scale=v_scale)
    return q_rot if q_out is None else q_out.copy_(q_rot)
