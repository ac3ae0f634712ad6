"""Caches larger than 2**31 elements: page offsets must be computed in 64 bits (GPU only: 9 GB of cache)."""

from __future__ import annotations

import pytest
import torch

from kernels import (
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_prefill_attention,
    paged_prefill_attention_ref,
    write_kv_cache,
)


@pytest.mark.gpu
def test_kernels_address_pages_beyond_two_to_the_31_elements(relative_error) -> None:
    block_size, num_kv_heads, head_dim, num_heads = 16, 8, 128, 32
    elements_per_block = block_size * num_kv_heads * head_dim
    num_blocks = (2**31 // elements_per_block) + 2048  # 2.18e9 elements per cache
    dtype, device = torch.bfloat16, "cuda"
    key_cache = torch.empty(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)
    value_cache = torch.empty_like(key_cache)
    context_lens = [300, 1000]
    g = torch.Generator(device=device).manual_seed(0)
    # Every page of both sequences lies past element 2**31 (block ids above 131072), in shuffled order.
    high = torch.arange(num_blocks - 2000, num_blocks, device=device, dtype=torch.int32)
    high = high[torch.randperm(high.numel(), generator=g, device=device)]
    pages = [-(-n // block_size) for n in context_lens]
    tables = torch.zeros(2, max(pages), dtype=torch.int32, device=device)
    tables[0, : pages[0]] = high[: pages[0]]
    tables[1, : pages[1]] = high[pages[0] : pages[0] + pages[1]]
    assert int(tables[tables > 0].min()) * elements_per_block > 2**31

    for i, n in enumerate(context_lens):
        positions = torch.arange(n, device=device)
        slots = tables[i].long()[positions // block_size] * block_size + positions % block_size
        k = torch.randn(n, num_kv_heads, head_dim, device=device, generator=g).to(dtype)
        v = torch.randn(n, num_kv_heads, head_dim, device=device, generator=g).to(dtype)
        write_kv_cache(k, v, key_cache, value_cache, slots)
        block, offset = int(slots[-1]) // block_size, int(slots[-1]) % block_size
        assert torch.equal(key_cache[block, offset], k[-1])

    lens = torch.tensor(context_lens, dtype=torch.int32, device=device)
    starts = torch.tensor([0, 300, 1300], dtype=torch.int32, device=device)
    q = torch.randn(1300, num_heads, head_dim, device=device, generator=g).to(dtype)
    args = (q, key_cache, value_cache, tables, starts, lens, head_dim**-0.5)
    out = paged_prefill_attention(*args)
    assert relative_error(out, paged_prefill_attention_ref(*args)) < 1.5e-2

    q1 = torch.randn(2, num_heads, head_dim, device=device, generator=g).to(dtype)
    dargs = (q1, key_cache, value_cache, tables, lens, head_dim**-0.5)
    out = paged_decode_attention(*dargs, max_context_len=1024, num_splits=4)
    assert relative_error(out, paged_decode_attention_ref(*dargs)) < 1.5e-2
