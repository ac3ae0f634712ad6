from __future__ import annotations

import pytest
import torch

from kernels import paged_decode_attention, paged_decode_attention_ref
from kernels.decode_attention import DecodeConfig, choose_num_splits

SHAPES = [(64, 16, 1, 2), (128, 32, 4, 1), (64, 32, 8, 1), (128, 16, 8, 2)]
CPU_CONFIG = DecodeConfig(block_n=32, num_warps=4, num_stages=1)


def _config(device: str) -> DecodeConfig | None:
    return CPU_CONFIG if device == "cpu" else None


def _decode(make_paged_cache, device, dtype, shape, context_lens, seed, **kwargs):
    head_dim, block_size, group, num_kv_heads = shape
    g = torch.Generator().manual_seed(seed)
    cache = make_paged_cache(context_lens, num_kv_heads, head_dim, block_size, dtype, device, g)
    q = torch.randn(len(context_lens), group * num_kv_heads, head_dim, generator=g).to(dtype).to(device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens, head_dim**-0.5)
    out = torch.full_like(q, float("nan"))
    result = paged_decode_attention(*args, out=out, config=_config(device), **kwargs)
    ref = paged_decode_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert result is out
    return result.cpu(), ref, cache, args


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}-bs{s[1]}-gqa{s[2]}")
@pytest.mark.parametrize("num_splits", [1, 3], ids=["nosplit", "split3"])
def test_decode_matches_reference_over_ragged_contexts(make_paged_cache, relative_error, tolerance, device, dtype, shape, num_splits):
    context_lens = [1, 77, 130, 33]
    result, ref, _, _ = _decode(
        make_paged_cache, device, dtype, shape, context_lens, seed=num_splits, max_context_len=max(context_lens), num_splits=num_splits
    )
    assert relative_error(result, ref) < tolerance


def test_decode_with_fixed_launch_shape_serves_other_context_lengths(make_paged_cache, relative_error, tolerance, device, dtype):
    # CUDA-graph use: one max_context_len and num_splits, replayed with shorter contexts; splits past a
    # sequence's end exit early and the reduction ignores them.
    shape = (64, 16, 4, 2)
    result, ref, cache, args = _decode(make_paged_cache, device, dtype, shape, [200, 3, 64], seed=5, max_context_len=256, num_splits=8)
    assert relative_error(result, ref) < tolerance
    shorter = torch.tensor([1, 150, 17], dtype=torch.int32, device=device)
    q, kc, vc, tables, _, scale = args
    out = paged_decode_attention(q, kc, vc, tables, shorter, scale, max_context_len=256, num_splits=8,
                                 config=_config(device))
    ref2 = paged_decode_attention_ref(q.cpu(), kc.cpu(), vc.cpu(), tables.cpu(), shorter.cpu(), scale)
    assert relative_error(out.cpu(), ref2) < tolerance


def test_decode_chooses_its_own_splits_when_not_given(make_paged_cache, relative_error, tolerance, device, dtype):
    result, ref, _, _ = _decode(make_paged_cache, device, dtype, (128, 16, 4, 1), [300, 5], seed=3)
    assert relative_error(result, ref) < tolerance


def test_split_heuristic_fills_the_gpu_only_when_sequences_are_few() -> None:
    cfg = DecodeConfig()
    assert choose_num_splits(256, 8, 4096, cfg) == 1
    assert choose_num_splits(64, 8, 4096, cfg) == 1
    assert choose_num_splits(16, 8, 4096, cfg) == 1  # 128 programs: nearly one per SM already
    assert choose_num_splits(12, 8, 4096, cfg) == 5
    assert choose_num_splits(8, 8, 32768, cfg) == 8
    assert choose_num_splits(1, 8, 32768, cfg) == 66
    assert choose_num_splits(1, 8, 300, cfg) == 3


def test_decode_rejects_bad_arguments_with_messages() -> None:
    q = torch.randn(2, 4, 64)
    cache = torch.randn(3, 16, 2, 64)
    tables = torch.zeros(2, 3, dtype=torch.int32)
    lens = torch.tensor([4, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="one query each"):
        paged_decode_attention(q[:1], cache, cache, tables, lens, 0.1)
    with pytest.raises(TypeError, match="context_lens must have dtype"):
        paged_decode_attention(q, cache, cache, tables, lens.long(), 0.1)
    with pytest.raises(ValueError, match="num_splits must be >= 1"):
        paged_decode_attention(q, cache, cache, tables, lens, 0.1, max_context_len=8, num_splits=0)
    with pytest.raises(ValueError, match="key_cache and value_cache must have one shape"):
        paged_decode_attention(q, cache, cache[:2], tables, lens, 0.1)


# Whole-tile TMA copies of K/V (pages of whole key tiles, the default for few sequences on such pages where the
# Gluon kernel is not available); the interpreter runs the tensor descriptors on CPU. Slots past each context hold
# NaN: the tail tile copies them and must keep them out of the result.
@pytest.mark.parametrize("num_splits", [1, 3], ids=["nosplit", "split3"])
@pytest.mark.parametrize(("block_size", "head_dim"), [(32, 64), (64, 128)], ids=["bs32-d64", "bs64-d128"])
def test_decode_with_tma_tiles_matches_reference(make_paged_cache, poison_past_context, relative_error, tolerance,
                                                 device, dtype, num_splits, block_size, head_dim):
    config = DecodeConfig(block_n=16 if device == "cpu" else 64, num_warps=4, num_stages=1 if device == "cpu" else 3,
                          tma=True)
    g = torch.Generator().manual_seed(block_size + num_splits)
    context_lens = [1, 77, 130, 64]
    cache = poison_past_context(make_paged_cache(context_lens, 2, head_dim, block_size, dtype, device, g))
    q = torch.randn(len(context_lens), 8, head_dim, generator=g).to(dtype).to(device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens, head_dim**-0.5)
    out = paged_decode_attention(*args, max_context_len=160, num_splits=num_splits, out=torch.full_like(q, float("nan")),
                                 config=config)
    ref = paged_decode_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert relative_error(out.cpu(), ref) < tolerance


def test_a_decode_call_marked_checked_gives_the_checked_calls_result_bit_for_bit(make_paged_cache, device, dtype):
    # What the worker's later layers call after its first layer's call passed the checks: the same launch.
    _, _, _, args = _decode(make_paged_cache, device, dtype, (64, 16, 4, 2), [40, 3, 64], seed=9, max_context_len=64,
                            num_splits=2)
    checked = paged_decode_attention(*args, max_context_len=64, num_splits=2, config=_config(device))
    unchecked = paged_decode_attention(*args, max_context_len=64, num_splits=2, config=_config(device), checked=True)
    assert torch.equal(unchecked, checked)


def test_an_fp8_cache_takes_the_gather_kernels_config_wherever_it_is_chosen() -> None:
    from kernels._checks import FP8_DTYPE
    from kernels.decode_attention import decode_config_device

    assert decode_config_device(torch.empty(2, 16, 1, 8, dtype=FP8_DTYPE)) is None
    assert decode_config_device(torch.empty(2, 16, 1, 8, dtype=torch.bfloat16)) == torch.device("cpu")
