"""The FP8 KV cache: scaled writes (alone and fused with rotary), and the decode and prefill kernels reading it."""

from __future__ import annotations

import pytest
import torch
import triton.language as tl

from kernels import paged_decode_attention, paged_decode_attention_ref, paged_prefill_attention
from kernels import paged_prefill_attention_ref, write_kv_cache, write_kv_cache_ref
from kernels._checks import FP8_DTYPE
from kernels._paged_tile import WIDEN_FP16, WIDEN_FP16_IN_REGISTERS, WIDEN_TO_QUERY
from kernels.cache_write import to_cache_ref
from kernels.decode_attention import DecodeConfig
from kernels.prefill_attention import PrefillConfig
from kernels.rotary_cache_write import apply_rotary_and_write_kv, apply_rotary_and_write_kv_ref

K_SCALE, V_SCALE = 0.5, 2.0  # scales far from 1, so a scale applied twice, never or the wrong way round shows


def _fp8_copy(cache, k_scale: float = K_SCALE, v_scale: float = V_SCALE):  # noqa: ANN001, ANN202
    """The same paged cache (a PagedCache) stored in FP8 with the given scales."""
    cache.key_cache = to_cache_ref(cache.key_cache, FP8_DTYPE, k_scale)
    cache.value_cache = to_cache_ref(cache.value_cache, FP8_DTYPE, v_scale)
    return cache


def test_fp8_cache_entries_are_the_values_over_their_scale_saturated() -> None:
    x = torch.tensor([0.5, -3.0, 1000.0, -1000.0, 0.0])
    stored = to_cache_ref(x, FP8_DTYPE, 2.0)
    assert stored.dtype == FP8_DTYPE
    assert stored.float().tolist() == [0.25, -1.5, 448.0, -448.0, 0.0]
    assert torch.equal(to_cache_ref(x, torch.float32, 2.0), x)  # other caches ignore the scale


def test_write_kv_cache_stores_scaled_fp8_as_its_reference(device, dtype) -> None:
    g = torch.Generator().manual_seed(1)
    key, value = (torch.randn(9, 2, 64, generator=g) * 4).to(dtype), torch.randn(9, 2, 64, generator=g).to(dtype)
    slots = torch.tensor([5, 0, -1, 17, 30, 2, -1, 8, 31])
    caches = [torch.zeros(4, 8, 2, 64, dtype=FP8_DTYPE) for _ in range(4)]
    kc, vc = caches[0].to(device), caches[1].to(device)
    write_kv_cache(key.to(device), value.to(device), kc, vc, slots.to(device), k_scale=K_SCALE, v_scale=V_SCALE)
    write_kv_cache_ref(key, value, caches[2], caches[3], slots, k_scale=K_SCALE, v_scale=V_SCALE)
    assert torch.equal(kc.cpu().view(torch.uint8), caches[2].view(torch.uint8))
    assert torch.equal(vc.cpu().view(torch.uint8), caches[3].view(torch.uint8))
    assert caches[2][0, 5].float().abs().sum() > 0


def test_fused_rotary_write_stores_scaled_fp8_as_its_reference(device, dtype) -> None:
    g = torch.Generator().manual_seed(2)
    n, heads, kv_heads, d = 7, 8, 2, 64
    q, k, v = (torch.randn(n, h, d, generator=g).to(dtype) for h in (heads, kv_heads, kv_heads))
    positions = torch.randint(0, 100, (n,), generator=g)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(100, dtype=torch.float32), inv_freq)
    slots = torch.tensor([3, 9, -1, 0, 15, 6, 12])
    cache, ref_cache = (torch.zeros(2, 2, 8, kv_heads, d, dtype=FP8_DTYPE) for _ in range(2))
    on = [t.to(device) for t in (q, k, v, positions, freqs.cos(), freqs.sin())]
    dev_cache = cache.to(device)
    q_out = apply_rotary_and_write_kv(*on, dev_cache[0], dev_cache[1], slots.to(device), k_scale=K_SCALE,
                                      v_scale=V_SCALE)
    q_ref = apply_rotary_and_write_kv_ref(q, k, v, positions, freqs.cos(), freqs.sin(), ref_cache[0], ref_cache[1],
                                          slots, k_scale=K_SCALE, v_scale=V_SCALE)
    assert q_out.dtype == dtype
    mismatched = (dev_cache.cpu().view(torch.uint8) != ref_cache.view(torch.uint8)).float().mean().item()
    if device == "cpu" and dtype != torch.bfloat16:
        assert mismatched == 0.0 and torch.equal(q_out, q_ref)
    else:
        # The interpreter truncates fp32 to bf16 where torch rounds, and the GPU may fuse the rotation's
        # multiply-adds: a value on an FP8 rounding boundary may then land one step away.
        assert mismatched < 2e-2


@pytest.mark.parametrize("context_lens, num_splits", [([1, 77, 130, 33], 1), ([200, 3, 64], 4)])
def test_decode_reads_the_fp8_cache_as_its_dequantised_reference(make_paged_cache, relative_error, tolerance, device,
                                                                 dtype, context_lens, num_splits) -> None:
    g = torch.Generator().manual_seed(num_splits)
    cache = _fp8_copy(make_paged_cache(context_lens, 2, 64, 16, torch.float32, device, g))
    q = torch.randn(len(context_lens), 8, 64, generator=g).to(dtype).to(device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens, 64**-0.5)
    config = DecodeConfig(block_n=32, num_warps=4, num_stages=1) if device == "cpu" else None
    out = paged_decode_attention(*args, max_context_len=max(context_lens), num_splits=num_splits, config=config,
                                 k_scale=K_SCALE, v_scale=V_SCALE)
    ref = paged_decode_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args),
                                     k_scale=K_SCALE, v_scale=V_SCALE)
    assert out.dtype == dtype
    assert relative_error(out.cpu(), ref) < tolerance


def _decode_fp8_cache(make_paged_cache, q_dtype: torch.dtype, fp8_widen: tl.constexpr,  # noqa: ANN001
                      device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel output, fp32 reference) of the decode kernel on an FP8 cache whose tiles widen as fp8_widen says."""
    g = torch.Generator().manual_seed(7)
    context_lens = [130, 9, 64]
    cache = _fp8_copy(make_paged_cache(context_lens, 2, 64, 16, torch.float32, device, g))
    q = torch.randn(len(context_lens), 8, 64, generator=g).to(q_dtype).to(device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens, 64**-0.5)
    config = DecodeConfig(block_n=32, num_warps=4, num_stages=1 if device == "cpu" else 2, fp8_widen=int(fp8_widen))
    out = paged_decode_attention(*args, max_context_len=max(context_lens), num_splits=2, config=config,
                                 k_scale=K_SCALE, v_scale=V_SCALE)
    ref = paged_decode_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args),
                                     k_scale=K_SCALE, v_scale=V_SCALE)
    return out.cpu(), ref


def test_decode_of_an_fp16_query_on_the_fp8_cache_is_the_same_however_its_tiles_widen(make_paged_cache) -> None:
    to_query = _decode_fp8_cache(make_paged_cache, torch.float16, WIDEN_TO_QUERY)[0]
    assert torch.equal(_decode_fp8_cache(make_paged_cache, torch.float16, WIDEN_FP16)[0], to_query)
    assert torch.equal(_decode_fp8_cache(make_paged_cache, torch.float16, WIDEN_FP16_IN_REGISTERS)[0], to_query)


def test_decode_of_a_bf16_query_on_the_fp8_cache_in_fp16_products_is_nearer_its_reference_than_in_bf16(
        make_paged_cache, relative_error) -> None:
    out, ref = _decode_fp8_cache(make_paged_cache, torch.bfloat16, WIDEN_FP16_IN_REGISTERS)
    bf16_products, _ = _decode_fp8_cache(make_paged_cache, torch.bfloat16, WIDEN_TO_QUERY)
    assert out.dtype == torch.bfloat16
    # q and p keep 10 mantissa bits in fp16 rather than 7; the output is still rounded to bf16.
    assert relative_error(out, ref) <= relative_error(bf16_products, ref) < 1.5e-2


@pytest.mark.gpu
def test_fp8_tiles_widened_in_registers_give_the_output_of_the_fp16_cast_on_the_gpu(make_paged_cache) -> None:
    # The same conversion either way: only where it runs differs (before or after the tile's trip through shared
    # memory), so the outputs are bit-identical.
    for q_dtype in (torch.bfloat16, torch.float16):
        cast = _decode_fp8_cache(make_paged_cache, q_dtype, WIDEN_FP16, "cuda")[0]
        assert torch.equal(_decode_fp8_cache(make_paged_cache, q_dtype, WIDEN_FP16_IN_REGISTERS, "cuda")[0], cast)


def test_prefill_reads_the_fp8_cache_as_its_dequantised_reference(make_paged_cache, relative_error, tolerance, device,
                                                                  dtype) -> None:
    g = torch.Generator().manual_seed(4)
    context_lens, query_lens = [40, 17, 1], [40, 5, 1]  # a whole prompt, a chunk after a prefix hit, one token
    cache = _fp8_copy(make_paged_cache(context_lens, 2, 64, 16, torch.float32, device, g))
    q = torch.randn(sum(query_lens), 4, 64, generator=g).to(dtype).to(device)
    starts = torch.tensor([0, 40, 45, 46], dtype=torch.int32, device=device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, starts, cache.context_lens, 64**-0.5)
    config = PrefillConfig(block_m=32, block_n=32, num_warps=4, num_stages=1) if device == "cpu" else None
    out = paged_prefill_attention(*args, config=config, k_scale=K_SCALE, v_scale=V_SCALE)
    ref = paged_prefill_attention_ref(*(a.cpu() for a in args[:-1]), args[-1], k_scale=K_SCALE, v_scale=V_SCALE)
    assert relative_error(out.cpu(), ref) < tolerance


def test_fp8_cache_attention_stays_near_the_bf16_cache(make_paged_cache, relative_error) -> None:
    g = torch.Generator().manual_seed(5)
    context_lens = [300, 64, 9]
    cache = make_paged_cache(context_lens, 2, 64, 16, torch.bfloat16, "cpu", g)
    q = torch.randn(3, 8, 64, generator=g).to(torch.bfloat16)
    bf16 = paged_decode_attention_ref(q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens,
                                      0.125)
    # Unit-variance K and V: scale 1/64 puts their largest entries near the top of the FP8 range.
    fp8 = _fp8_copy(cache, 1 / 64, 1 / 64)
    out = paged_decode_attention_ref(q, fp8.key_cache, fp8.value_cache, fp8.block_tables, fp8.context_lens, 0.125,
                                     k_scale=1 / 64, v_scale=1 / 64)
    # FP8 keeps 3 mantissa bits: about 2-4% relative error per entry, averaged down over the keys.
    assert relative_error(out, bf16) < 0.05


@pytest.mark.gpu
def test_default_kernels_take_the_gather_path_for_an_fp8_cache_on_the_gpu(make_paged_cache, relative_error) -> None:
    g = torch.Generator().manual_seed(6)
    context_lens = [4000, 1]  # the split Gluon/TMA shapes for a bf16 cache
    cache = _fp8_copy(make_paged_cache(context_lens, 8, 128, 16, torch.float32, "cuda", g))
    q = torch.randn(2, 32, 128, generator=g).to(torch.bfloat16).cuda()
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens, 128**-0.5)
    out = paged_decode_attention(*args, k_scale=K_SCALE, v_scale=V_SCALE)
    ref = paged_decode_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args),
                                     k_scale=K_SCALE, v_scale=V_SCALE)
    assert relative_error(out.cpu(), ref) < 1.5e-2
