from __future__ import annotations

import pytest
import torch

from kernels import write_kv_cache, write_kv_cache_ref


@pytest.mark.parametrize("block_size, num_kv_heads, head_dim", [(16, 2, 64), (32, 1, 128), (16, 3, 80)])
def test_write_kv_cache_stores_each_token_at_its_slot_and_skips_negative_slots(
    device: str, dtype: torch.dtype, block_size: int, num_kv_heads: int, head_dim: int
) -> None:
    g = torch.Generator().manual_seed(1)
    num_blocks, num_tokens = 6, 21
    # key and value are strided views of one fused [num_tokens, 2, kv_heads, d] projection output.
    kv = torch.randn(num_tokens, 2, num_kv_heads, head_dim, generator=g).to(dtype).to(device)
    key, value = kv[:, 0], kv[:, 1]
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[[3, 10]] = -1
    slot_mapping = slots.to(device)
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype).to(device)
    value_cache = torch.randn_like(key_cache)
    expected_k, expected_v = key_cache.clone(), value_cache.clone()

    write_kv_cache(key, value, key_cache, value_cache, slot_mapping)
    write_kv_cache_ref(key, value, expected_k, expected_v, slot_mapping)

    assert torch.equal(key_cache, expected_k)
    assert torch.equal(value_cache, expected_v)
    slot = int(slots[0])
    assert torch.equal(key_cache[slot // block_size, slot % block_size], key[0])
    skipped = int(slots[3])  # -1: nothing in the cache may hold token 3's key
    assert skipped == -1
    assert not (key_cache == key[3]).all(dim=(-1, -2)).any()


def test_write_kv_cache_rejects_mismatched_shapes_and_dtypes() -> None:
    key = torch.randn(4, 2, 64)
    cache = torch.zeros(3, 16, 2, 64)
    slots = torch.arange(4)
    with pytest.raises(ValueError, match="key must have shape"):
        write_kv_cache(key[:, :1], key, cache, cache.clone(), slots)
    with pytest.raises(ValueError, match="slot_mapping must have shape"):
        write_kv_cache(key, key, cache, cache.clone(), slots[:3])
    with pytest.raises(TypeError, match="slot_mapping must have dtype"):
        write_kv_cache(key, key, cache, cache.clone(), slots.float())
    with pytest.raises(TypeError, match="key_cache and value_cache dtypes differ"):
        write_kv_cache(key, key, cache, cache.half(), slots)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        write_kv_cache(key.tolist(), key, cache, cache.clone(), slots)
