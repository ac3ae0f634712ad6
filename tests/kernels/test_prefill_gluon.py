"""The Gluon Hopper prefill kernel (kernels/prefill_gluon.py) against the fp32 reference.

GPU tests run only on an sm_90 device (marked `gpu`); the CPU tests check that the module imports everywhere and that
the launcher refuses what it cannot run with a clear error.
"""

from __future__ import annotations

import pytest
import torch

from kernels import paged_prefill_attention_ref
from kernels.prefill_gluon import (
    HopperPrefillConfig,
    default_hopper_prefill_config,
    paged_prefill_attention_hopper,
    supports_hopper_prefill,
)

BF16_TOLERANCE = 1.5e-2  # relative-norm error against the fp32 reference, as in the other bf16 GPU tests


def _on_hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def needs_hopper(test):
    """`gpu` (skipped without CUDA) and skipped on any GPU but an sm_90 one."""
    return pytest.mark.gpu(pytest.mark.skipif(not _on_hopper(), reason="needs an sm_90 (Hopper) GPU")(test))

# (head_dim, block_size, queries per kv head, num_kv_heads)
SHAPES = [(128, 16, 4, 2), (128, 64, 1, 2), (64, 16, 8, 1), (64, 64, 4, 2), (128, 64, 8, 1)]
CONFIGS = [
    None,  # the default: independent warpgroups (ping-pong at d64), 128-key tiles, two stages
    HopperPrefillConfig(schedule="independent"),
    HopperPrefillConfig(schedule="pingpong"),
    HopperPrefillConfig(block_n=64, stages=3, schedule="pingpong"),
    HopperPrefillConfig(block_n=64, stages=4, schedule="independent"),
]
CONFIG_IDS = ["default", "independent", "pingpong", "pingpong-n64s3", "independent-n64s4"]
SCHEDULE_CONFIGS = CONFIGS[1:3]  # each schedule at the default tile
SCHEDULE_IDS = CONFIG_IDS[1:3]


def _run_case(make_paged_cache, shape, context_lens, query_lens, causal, seed, config=None, poison=None):
    head_dim, block_size, group, num_kv_heads = shape
    g = torch.Generator().manual_seed(seed)
    cache = make_paged_cache(context_lens, num_kv_heads, head_dim, block_size, torch.bfloat16, "cuda", g)
    if poison is not None:
        poison(cache)
    num_heads = group * num_kv_heads
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=g).to(torch.bfloat16).cuda()
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan"))  # poisoned: every row must be written
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, starts, cache.context_lens, head_dim**-0.5)
    result = paged_prefill_attention_hopper(*args, causal=causal, max_query_len=max(query_lens), out=out,
                                            config=config)
    torch.cuda.synchronize()
    ref = paged_prefill_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args), causal=causal)
    assert result is out
    return result.cpu(), ref


# A fresh prompt longer than two query blocks, a prefix-cache hit (context before the queries), a middle chunk,
# a length-1 sequence, a one-query continuation of a long context, and lengths that are multiples of no tile.
RAGGED_CONTEXTS = [300, 517, 1, 200, 129, 77]
RAGGED_QUERIES = [300, 133, 1, 64, 1, 77]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}-bs{s[1]}-gqa{s[2]}")
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@needs_hopper
def test_hopper_prefill_matches_reference_on_ragged_paged_batches(
    make_paged_cache, relative_error, shape, config, causal
):
    result, ref = _run_case(make_paged_cache, shape, RAGGED_CONTEXTS, RAGGED_QUERIES, causal, sum(shape), config)
    assert relative_error(result, ref) < BF16_TOLERANCE


@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: f"d{s[0]}-bs{s[1]}-gqa{s[2]}")
@pytest.mark.parametrize("config", SCHEDULE_CONFIGS, ids=SCHEDULE_IDS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@needs_hopper
def test_hopper_prefill_ignores_nan_in_cache_slots_past_the_context(
    make_paged_cache, poison_past_context, relative_error, shape, config, causal
):
    result, ref = _run_case(make_paged_cache, shape, [45, 70, 1, 33, 250], [45, 19, 1, 1, 250], causal, 11,
                            config, poison=poison_past_context)
    assert not torch.isnan(result).any()
    assert relative_error(result, ref) < BF16_TOLERANCE


@pytest.mark.parametrize("block_size", [16, 64])
@pytest.mark.parametrize("config", SCHEDULE_CONFIGS, ids=SCHEDULE_IDS)
@needs_hopper
def test_hopper_prefill_matches_reference_on_a_long_causal_prompt(make_paged_cache, relative_error, block_size,
                                                                  config):
    result, ref = _run_case(make_paged_cache, (128, block_size, 4, 2), [2000], [2000], True, 5, config)
    assert relative_error(result, ref) < BF16_TOLERANCE


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("config", CONFIGS[1:4], ids=CONFIG_IDS[1:4])
@needs_hopper
def test_hopper_prefill_programs_each_take_several_blocks(make_paged_cache, relative_error, causal,
                                                                    config):
    # 32 query heads x 24 sequences x 3 query blocks = 2304 work items: 18 rounds on an H100's 132 programs, with
    # prefix hits, length-1 sequences and blocks past the shorter sequences' ends skipped along the way.
    contexts = [300, 1, 129, 517, 64, 256, 1, 290, 383, 2, 130, 257] * 2
    queries = [300, 1, 1, 133, 64, 256, 1, 2, 383, 2, 3, 128] * 2
    result, ref = _run_case(make_paged_cache, (128, 16, 8, 4), contexts, queries, causal, 21, config)
    assert relative_error(result, ref) < BF16_TOLERANCE


def test_gluon_prefill_module_imports_without_a_gpu() -> None:
    import kernels.prefill_gluon as module
    import kernels.prefill_gluon_kernel as kernel

    assert module.default_hopper_prefill_config(128, 16) == HopperPrefillConfig()
    assert module.default_hopper_prefill_config(64, 16) == HopperPrefillConfig(schedule="pingpong")
    assert kernel.HALF_M * 2 == kernel.BLOCK_M
    assert default_hopper_prefill_config(64, 64).stages >= 2


def test_hopper_prefill_is_unsupported_for_cpu_tensors() -> None:
    q = torch.randn(4, 8, 64, dtype=torch.bfloat16)
    cache = torch.randn(3, 16, 2, 64, dtype=torch.bfloat16)
    assert not supports_hopper_prefill(q, cache, cache)


def _one_cpu_sequence(num_heads: int, num_kv_heads: int) -> tuple:
    """q, key cache, value cache, block table, query starts and context length of one 4-token CPU sequence."""
    q = torch.randn(4, num_heads, 64, dtype=torch.bfloat16)
    cache = torch.randn(3, 16, num_kv_heads, 64, dtype=torch.bfloat16)
    return (q, cache, cache, torch.zeros(1, 3, dtype=torch.int32), torch.tensor([0, 4], dtype=torch.int32),
            torch.tensor([4], dtype=torch.int32))


def test_hopper_prefill_launcher_raises_a_clear_error_for_cpu_tensors() -> None:
    with pytest.raises(RuntimeError, match="paged_prefill_attention_hopper"):
        paged_prefill_attention_hopper(*_one_cpu_sequence(8, 2), 0.125)


def test_hopper_prefill_rejects_bad_arguments_like_the_triton_kernel() -> None:
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_prefill_attention_hopper(*_one_cpu_sequence(6, 4), 0.1)


@pytest.mark.parametrize("kwargs", [{"block_n": 32}, {"stages": 1}, {"stages": 5}, {"schedule": "zigzag"},
                                    {"schedule": "cooperative"}])
def test_hopper_prefill_config_rejects_unsupported_tiles(kwargs) -> None:
    with pytest.raises(ValueError):
        HopperPrefillConfig(**kwargs)
