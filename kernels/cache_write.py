"""Write of this step's new keys and values into the paged KV cache through a slot mapping."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._checks import (
    FLOAT_DTYPES,
    FP8_DTYPE,
    FP8_MAX,
    check_inner_contiguous,
    check_kv_cache,
    check_launchable,
    check_same_device,
    check_shape,
    check_tensor,
)


@triton.jit
def cache_value(x, inv_scale, cache_ptr, FP8: tl.constexpr):
    """x as a cache stores it: in the cache's dtype; an FP8 cache holds x / scale, saturated at ±448."""
    if FP8:
        x = tl.clamp(x.to(tl.float32) * inv_scale, -448.0, 448.0)  # FP8_MAX
    return x.to(cache_ptr.dtype.element_ty)


@triton.jit
def _write_kv_cache_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_cs, stride_ch,
    block_size, k_inv_scale, v_inv_scale,
    HEAD_DIM: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    BLOCK: tl.constexpr,
    FP8: tl.constexpr,
):
    # One program per token: it copies all of the token's kv heads (NUM_KV_HEADS * HEAD_DIM elements).
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        block_id = slot // block_size
        offset_in_block = slot % block_size
        idx = tl.arange(0, BLOCK)
        mask = idx < NUM_KV_HEADS * HEAD_DIM
        head = idx // HEAD_DIM
        dim = idx % HEAD_DIM
        k = tl.load(key_ptr + token * stride_kt + head * stride_kh + dim, mask=mask)
        v = tl.load(value_ptr + token * stride_vt + head * stride_vh + dim, mask=mask)
        # int64: block_id * stride_cb exceeds 2**31 once the cache holds more than 2**31 elements.
        dst = block_id * stride_cb + offset_in_block * stride_cs + head * stride_ch + dim
        tl.store(key_cache_ptr + dst, cache_value(k, k_inv_scale, key_cache_ptr, FP8), mask=mask)
        tl.store(value_cache_ptr + dst, cache_value(v, v_inv_scale, value_cache_ptr, FP8), mask=mask)


def _check_args(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> tuple[int, int, int, int]:
    check_tensor("key", key, 3, FLOAT_DTYPES)
    check_tensor("value", value, 3, FLOAT_DTYPES)
    check_tensor("slot_mapping", slot_mapping, 1, (torch.int64, torch.int32))
    num_blocks, block_size, num_kv_heads, head_dim = check_kv_cache(key_cache, value_cache)
    num_tokens = key.shape[0]
    check_shape("key", key, (num_tokens, num_kv_heads, head_dim))
    check_shape("value", value, (num_tokens, num_kv_heads, head_dim))
    check_shape("slot_mapping", slot_mapping, (num_tokens,))
    if key.dtype != value.dtype:
        raise TypeError(f"key and value dtypes differ: {key.dtype} and {value.dtype}")
    check_inner_contiguous("key", key)
    check_inner_contiguous("value", value)
    check_same_device(
        key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping
    )
    return num_tokens, block_size, num_kv_heads, head_dim


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Stores key[i], value[i] ([num_tokens, num_kv_heads, head_dim]) at slot_mapping[i] of the caches
    ([num_blocks, block_size, num_kv_heads, head_dim]); slot = block_id * block_size + offset, negative = skip.
    An FP8 cache stores key / k_scale and value / v_scale (see to_cache_ref)."""
    num_tokens, block_size, num_kv_heads, head_dim = _check_args(key, value, key_cache, value_cache, slot_mapping)
    check_launchable(key.device)
    if num_tokens == 0:
        return
    block = triton.next_power_of_2(num_kv_heads * head_dim)
    _write_kv_cache_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_size, 1.0 / k_scale, 1.0 / v_scale,
        HEAD_DIM=head_dim, NUM_KV_HEADS=num_kv_heads, BLOCK=block, FP8=key_cache.dtype == FP8_DTYPE,
        num_warps=4 if block >= 1024 else 1,
    )


def write_kv_cache_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Plain torch version of write_kv_cache (same arguments, same in-place effect)."""
    _check_args(key, value, key_cache, value_cache, slot_mapping)
    block_size = key_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, offsets] = to_cache_ref(key[keep], key_cache.dtype, k_scale)
    value_cache[blocks, offsets] = to_cache_ref(value[keep], value_cache.dtype, v_scale)


def to_cache_ref(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """x in a cache of `dtype`: an FP8 cache holds x / scale in fp32, saturated at ±448, rounded to nearest even;
    other caches hold x rounded to their dtype (the scale unused)."""
    if dtype != FP8_DTYPE:
        return x.to(dtype)
    return (x.float() * (1.0 / scale)).clamp(-FP8_MAX, FP8_MAX).to(dtype)
