"""The fused rotary + KV-cache write equals apply_rotary followed by write_kv_cache, bit for bit."""

from __future__ import annotations

import pytest
import torch

from kernels import apply_rotary, write_kv_cache
from kernels.rotary_cache_write import apply_rotary_and_write_kv, apply_rotary_and_write_kv_ref


def _tables(head_dim: int, max_position: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)  # [max_position, d/2]
    return freqs.cos(), freqs.sin()


def _case(dtype: torch.dtype, device: str, num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int,
          block_size: int, num_blocks: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    # q, k and v are strided views of one fused projection output, as the decoder passes them.
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * kv_size, generator=g).to(dtype).to(device)
    q = qkv[:, :q_size].view(num_tokens, num_heads, head_dim)
    k = qkv[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, q_size + kv_size :].view(num_tokens, num_kv_heads, head_dim)
    positions = torch.randint(0, 500, (num_tokens,), generator=g).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[3::5] = -1  # tokens 3, 8, ... write nowhere
    cos, sin = (t.to(device) for t in _tables(head_dim, 500))
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype).to(device)
    return q, k, v, positions, cos, sin, cache, slots.to(device)


@pytest.mark.parametrize(
    "num_tokens, num_heads, num_kv_heads, head_dim", [(1, 32, 8, 64), (13, 4, 1, 128), (6, 6, 3, 80)]
)
def test_fused_rotary_cache_write_equals_rotary_then_cache_write(
    device: str, dtype: torch.dtype, num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int
) -> None:
    q, k, v, positions, cos, sin, cache, slots = _case(
        dtype, device, num_tokens, num_heads, num_kv_heads, head_dim, 16, 4, seed=num_tokens
    )
    fused_cache, split_cache = cache.clone(), cache.clone()

    q_fused = apply_rotary_and_write_kv(q, k, v, positions, cos, sin, fused_cache[0], fused_cache[1], slots)
    q_rot, k_rot = apply_rotary(q, k, positions, cos, sin)
    write_kv_cache(k_rot, v, split_cache[0], split_cache[1], slots)

    assert torch.equal(q_fused, q_rot)
    assert torch.equal(fused_cache, split_cache)
    kept = [i for i, s in enumerate(slots.tolist()) if s >= 0]
    assert torch.equal(fused_cache[1].flatten(0, 1)[slots[kept]], v[kept])
    untouched = torch.ones(fused_cache.shape[1] * 16, dtype=torch.bool)
    untouched[slots[kept].cpu()] = False
    untouched = untouched.to(device)
    assert torch.equal(fused_cache.flatten(1, 2)[:, untouched], cache.flatten(1, 2)[:, untouched])


def _assert_q_goes_into_q_out(fused, device: str, dtype: torch.dtype) -> None:
    q, k, v, positions, cos, sin, cache, slots = _case(dtype, device, 7, 4, 2, 64, 16, 2, seed=2)
    fresh_cache, out_cache = cache.clone(), cache.clone()
    q_rot = fused(q, k, v, positions, cos, sin, fresh_cache[0], fresh_cache[1], slots)
    buffer = torch.zeros(9, 4, 64, dtype=dtype, device=device)  # a static buffer longer than the step
    q_out = fused(q, k, v, positions, cos, sin, out_cache[0], out_cache[1], slots, q_out=buffer[:7])
    assert q_out.data_ptr() == buffer.data_ptr()
    assert torch.equal(buffer[:7], q_rot) and torch.equal(out_cache, fresh_cache)
    assert torch.equal(buffer[7:], torch.zeros_like(buffer[7:]))
    with pytest.raises(ValueError, match="q_out must have shape"):
        fused(q, k, v, positions, cos, sin, out_cache[0], out_cache[1], slots, q_out=buffer[:6])


def test_fused_rotary_cache_write_puts_the_rotated_q_into_q_out_when_given(device, dtype) -> None:
    _assert_q_goes_into_q_out(apply_rotary_and_write_kv, device, dtype)


def test_fused_rotary_cache_write_reference_puts_the_rotated_q_into_q_out_when_given() -> None:
    _assert_q_goes_into_q_out(apply_rotary_and_write_kv_ref, "cpu", torch.bfloat16)


def test_fused_rotary_cache_write_kernel_matches_its_reference_in_fp32() -> None:
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU kernels need TRITON_INTERPRET=1")
    q, k, v, positions, cos, sin, cache, slots = _case(torch.float32, "cpu", 9, 8, 2, 64, 8, 3, seed=5)
    ref_cache = cache.clone()
    q_out = apply_rotary_and_write_kv(q, k, v, positions.int(), cos, sin, cache[0], cache[1], slots.int())
    q_ref = apply_rotary_and_write_kv_ref(q, k, v, positions, cos, sin, ref_cache[0], ref_cache[1], slots)
    torch.testing.assert_close(q_out, q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cache, ref_cache, rtol=1e-6, atol=1e-6)
    assert not torch.equal(cache, ref_cache.roll(1, dims=1))


def test_fused_rotary_cache_write_rejects_mismatched_arguments() -> None:
    q, k, v, positions, cos, sin, cache, slots = _case(torch.float32, "cpu", 4, 4, 2, 64, 16, 2, seed=1)
    kc, vc = cache[0], cache[1]
    with pytest.raises(ValueError, match="k must have shape"):
        apply_rotary_and_write_kv(q, k[:, :1], v, positions, cos, sin, kc, vc, slots)
    with pytest.raises(ValueError, match="slot_mapping must have shape"):
        apply_rotary_and_write_kv(q, k, v, positions, cos, sin, kc, vc, slots[:3])
    with pytest.raises(TypeError, match="v must have dtype"):
        apply_rotary_and_write_kv(q, k, v.double(), positions, cos, sin, kc, vc, slots)
    with pytest.raises(ValueError, match="cos and sin"):
        apply_rotary_and_write_kv(q, k, v, positions, cos[:, :8], sin[:, :8], kc, vc, slots)
    with pytest.raises(TypeError, match="key_cache and value_cache dtypes differ"):
        apply_rotary_and_write_kv(q, k, v, positions, cos, sin, kc, vc.half(), slots)
