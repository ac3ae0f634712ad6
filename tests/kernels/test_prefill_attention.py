from __future__ import annotations

import pytest
import torch

from kernels import paged_prefill_attention, paged_prefill_attention_ref
from kernels.prefill_attention import PrefillConfig

# (head_dim, block_size, queries per kv head, num_kv_heads); CPU tiles stay large so the interpreter is quick.
SHAPES = [(64, 16, 1, 2), (128, 32, 4, 1), (64, 32, 8, 1), (128, 16, 4, 2)]
CPU_CONFIG = PrefillConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)


def _config(device: str) -> PrefillConfig | None:
    return CPU_CONFIG if device == "cpu" else None


def _run_case(make_paged_cache, device, dtype, shape, context_lens, query_lens, causal, seed):
    head_dim, block_size, group, num_kv_heads = shape
    g = torch.Generator().manual_seed(seed)
    cache = make_paged_cache(context_lens, num_kv_heads, head_dim, block_size, dtype, device, g)
    num_heads = group * num_kv_heads
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=g).to(dtype).to(device)
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    scale = head_dim**-0.5
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, starts, cache.context_lens, scale)
    result = paged_prefill_attention(
        *args, causal=causal, max_query_len=max(query_lens), out=out, config=_config(device)
    )
    ref = paged_prefill_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args), causal=causal)
    assert result is out
    return result.cpu(), ref


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}-bs{s[1]}-gqa{s[2]}")
def test_causal_prefill_matches_reference_with_prefix_hits_chunks_and_length_one(
    make_paged_cache, relative_error, tolerance, device, dtype, shape
):
    # A fresh prompt, a prefix-cache hit (context before the queries), a middle chunk, length-1 sequences, and a
    # chunk whose first query sits two keys before a tile boundary (the edge of the unmasked part of the loop).
    context_lens = [45, 70, 1, 33, 1 + shape[1], 50]
    query_lens = [45, 19, 1, 1, 7, 20]
    result, ref = _run_case(make_paged_cache, device, dtype, shape, context_lens, query_lens, True, sum(shape))
    assert relative_error(result, ref) < tolerance


@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: f"d{s[0]}-bs{s[1]}-gqa{s[2]}")
def test_encoder_prefill_lets_every_query_see_every_key(
    make_paged_cache, relative_error, tolerance, device, dtype, shape
):
    result, ref = _run_case(make_paged_cache, device, dtype, shape, [37, 1, 50], [37, 1, 50], False, 7)
    assert relative_error(result, ref) < tolerance


def test_prefill_reference_sees_only_earlier_positions() -> None:
    # With value = one-hot of the position and equal scores, query p averages positions 0..p exactly.
    n, d = 5, 16
    cache_v = torch.zeros(1, 8, 1, d)
    cache_v[0, torch.arange(n), 0, torch.arange(n)] = 1.0
    cache_k = torch.zeros(1, 8, 1, d)
    q = torch.zeros(n, 1, d)
    out = paged_prefill_attention_ref(
        q, cache_k, cache_v, torch.zeros(1, 1, dtype=torch.int32),
        torch.tensor([0, n], dtype=torch.int32), torch.tensor([n], dtype=torch.int32), 1.0,
    )
    for p in range(n):
        expected = torch.zeros(d)
        expected[: p + 1] = 1.0 / (p + 1)
        assert torch.allclose(out[p, 0], expected, atol=1e-7)


def test_prefill_rejects_bad_arguments_with_messages() -> None:
    q = torch.randn(4, 6, 64)
    cache = torch.randn(3, 16, 4, 64)
    tables = torch.zeros(1, 3, dtype=torch.int32)
    starts = torch.tensor([0, 4], dtype=torch.int32)
    lens = torch.tensor([4], dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_prefill_attention(q, cache, cache, tables, starts, lens, 0.1)
    with pytest.raises(TypeError, match="block_tables must have dtype"):
        paged_prefill_attention(q[:, :4], cache, cache, tables.long(), starts, lens, 0.1)
    with pytest.raises(ValueError, match="num_seqs \\+ 1"):
        paged_prefill_attention(q[:, :4], cache, cache, tables, starts[:1], lens, 0.1)
    with pytest.raises(TypeError, match="must match the query dtype"):
        paged_prefill_attention(q[:, :4].half(), cache, cache, tables, starts, lens, 0.1)
    with pytest.raises(ValueError, match="head_dim"):
        paged_prefill_attention(q[:, :4, :32], cache, cache, tables, starts, lens, 0.1)
    with pytest.raises(ValueError, match="power of two"):
        PrefillConfig(block_m=48)


def test_prefill_rejects_an_out_buffer_unlike_q_with_messages() -> None:
    q = torch.randn(4, 4, 64)
    cache = torch.randn(3, 16, 4, 64)
    args = (q, cache, cache, torch.zeros(1, 3, dtype=torch.int32), torch.tensor([0, 4], dtype=torch.int32),
            torch.tensor([4], dtype=torch.int32), 0.1)
    with pytest.raises(ValueError, match=r"^out must have shape \(4, 4, 64\), got \(3, 4, 64\)$"):
        paged_prefill_attention(*args, out=torch.empty(3, 4, 64))
    with pytest.raises(TypeError, match=r"^out must have dtype in \(torch.float32\), got torch.float16$"):
        paged_prefill_attention(*args, out=torch.empty(4, 4, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"^out must have stride 1 in its last dimension, got strides \(1, 4, 16\)$"):
        paged_prefill_attention(*args, out=torch.empty(64, 4, 4).permute(2, 1, 0))


# Page lookups (kernels/_paged_tile.py): the gathered vector and per-page scalars run everywhere, the
# inline-assembly lookup only compiled. Pages larger than the key tile (64 > 32) put several tiles in one page.
@pytest.mark.parametrize("page_loads", [0, 1, 2], ids=["vector", "scalar", "asm"])
@pytest.mark.parametrize("block_size", [16, 64], ids=["bs16", "bs64"])
def test_prefill_page_lookups_give_the_reference_result(
    make_paged_cache, relative_error, tolerance, device, dtype, page_loads, block_size
):
    if page_loads == 2 and device == "cpu":
        pytest.skip("inline assembly runs only compiled")
    config = PrefillConfig(block_m=32, block_n=32, num_warps=4, num_stages=1 if device == "cpu" else 3,
                           page_loads=page_loads)
    g = torch.Generator().manual_seed(11 + block_size)
    context_lens, query_lens = [150, 37], [70, 37]
    cache = make_paged_cache(context_lens, 1, 64, block_size, dtype, device, g)
    q = torch.randn(sum(query_lens), 2, 64, generator=g).to(dtype).to(device)
    starts = torch.tensor([0, 70, 107], dtype=torch.int32, device=device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, starts, cache.context_lens, 0.125)
    out = paged_prefill_attention(*args, max_query_len=70, out=torch.full_like(q, float("nan")), config=config)
    ref = paged_prefill_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert relative_error(out.cpu(), ref) < tolerance


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
def test_prefill_with_two_row_halves_per_program_gives_the_reference_result(
    make_paged_cache, relative_error, tolerance, device, dtype, causal
):
    config = PrefillConfig(block_m=32 if device == "cpu" else 128, block_n=32 if device == "cpu" else 64,
                           num_warps=4, num_stages=1 if device == "cpu" else 3, split_rows=True)
    g = torch.Generator().manual_seed(23)
    context_lens, query_lens = [90, 40, 17], [90, 23, 1]
    cache = make_paged_cache(context_lens, 2, 64, 16, dtype, device, g)
    q = torch.randn(sum(query_lens), 4, 64, generator=g).to(dtype).to(device)
    starts = torch.tensor([0, 90, 113, 114], dtype=torch.int32, device=device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, starts, cache.context_lens, 0.125)
    out = paged_prefill_attention(*args, causal=causal, max_query_len=90, out=torch.full_like(q, float("nan")),
                                  config=config)
    ref = paged_prefill_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args), causal=causal)
    assert relative_error(out.cpu(), ref) < tolerance


def test_a_call_marked_checked_gives_the_checked_calls_result_bit_for_bit(make_paged_cache, device, dtype) -> None:
    # What the worker's later layers call after its first layer's call passed the checks: the same launch.
    g = torch.Generator().manual_seed(3)
    cache = make_paged_cache([40, 21], 2, 64, 16, dtype, device, g)
    q = torch.randn(30, 4, 64, generator=g).to(dtype).to(device)
    starts = torch.tensor([0, 20, 30], dtype=torch.int32, device=device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, starts, cache.context_lens, 0.125)
    checked = paged_prefill_attention(*args, max_query_len=20, config=_config(device))
    unchecked = paged_prefill_attention(*args, max_query_len=20, config=_config(device), checked=True)
    assert torch.equal(unchecked, checked)
    with pytest.raises(ValueError, match="query_start_loc must have num_seqs"):
        paged_prefill_attention(q, cache.key_cache, cache.value_cache, cache.block_tables, starts[:2],
                                cache.context_lens, 0.125)
