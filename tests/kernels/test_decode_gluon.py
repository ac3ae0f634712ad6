"""The Gluon Hopper decode kernel (kernels/decode_gluon.py, DecodeConfig(gluon=True)) against the fp32 reference.

GPU tests run only on an sm_90 device (marked `gpu`); the CPU tests check that the module imports everywhere, that
it says why it cannot run, and that a gluon config elsewhere runs the Triton kernels instead.
"""

from __future__ import annotations

import pytest
import torch

from kernels import paged_decode_attention, paged_decode_attention_ref
from kernels.decode_attention import NUM_SMS_H100, DecodeConfig, default_decode_config
from kernels.decode_gluon import gluon_decode_unsupported_reason

BF16_TOLERANCE = 1.5e-2  # relative-norm error against the fp32 reference, as in the other bf16 GPU tests


def _on_hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def needs_hopper(test):
    """`gpu` (skipped without CUDA) and skipped on any GPU but an sm_90 one."""
    return pytest.mark.gpu(pytest.mark.skipif(not _on_hopper(), reason="needs an sm_90 (Hopper) GPU")(test))


def _decode(make_paged_cache, poison_past_context, shape, context_lens, num_splits, config, seed):
    head_dim, block_size, group, num_kv_heads = shape
    g = torch.Generator().manual_seed(seed)
    cache = poison_past_context(make_paged_cache(context_lens, num_kv_heads, head_dim, block_size, torch.bfloat16,
                                                 "cuda", g))
    q = torch.randn(len(context_lens), group * num_kv_heads, head_dim, generator=g).to(torch.bfloat16).cuda()
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens, head_dim**-0.5)
    out = torch.full_like(q, float("nan"))  # poisoned: every row must be written
    result = paged_decode_attention(*args, max_context_len=max(context_lens), num_splits=num_splits, out=out,
                                    config=config)
    torch.cuda.synchronize()
    ref = paged_decode_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert result is out
    return result.cpu(), ref


# (head_dim, block_size, queries per kv head, num_kv_heads)
SHAPES = [(128, 16, 4, 2), (128, 64, 1, 2), (64, 16, 8, 1), (64, 64, 4, 2), (128, 32, 16, 1)]
# Lengths of one key, of a whole number of pages, and of no tile or page multiple; stale NaN past each context.
RAGGED_CONTEXTS = [1, 77, 130, 64, 300, 1000]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}-bs{s[1]}-gqa{s[2]}")
@pytest.mark.parametrize("num_splits", [1, 3], ids=["nosplit", "split3"])
@pytest.mark.parametrize(("block_n", "stages"), [(64, 2), (64, 3), (128, 2)], ids=["n64s2", "n64s3", "n128s2"])
@needs_hopper
def test_gluon_decode_matches_reference_over_ragged_contexts(make_paged_cache, poison_past_context, relative_error,
                                                             shape, num_splits, block_n, stages):
    config = DecodeConfig(block_n=block_n, num_stages=stages, gluon=True)
    result, ref = _decode(make_paged_cache, poison_past_context, shape, RAGGED_CONTEXTS, num_splits, config,
                          sum(shape) + num_splits)
    assert not result.isnan().any()
    assert relative_error(result, ref) < BF16_TOLERANCE


@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: f"d{s[0]}-bs{s[1]}-gqa{s[2]}")
@pytest.mark.parametrize("num_splits", [1, 3], ids=["nosplit", "split3"])
@needs_hopper
def test_gluon_decode_as_a_dependent_launch_matches_reference(make_paged_cache, poison_past_context,
                                                              relative_error, shape, num_splits):
    config = DecodeConfig(block_n=64, num_stages=2, gluon=True, pdl=True)
    result, ref = _decode(make_paged_cache, poison_past_context, shape, RAGGED_CONTEXTS, num_splits, config, 17)
    assert not result.isnan().any()
    assert relative_error(result, ref) < BF16_TOLERANCE


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}-bs{s[1]}-gqa{s[2]}")
@pytest.mark.parametrize("num_splits", [1, 3], ids=["nosplit", "split3"])
@pytest.mark.parametrize(("stages", "in_flight", "pdl"), [(4, 2, True), (6, 2, True), (3, 1, False)],
                         ids=["s4f2-pdl", "s6f2-pdl", "s3f1"])
@needs_hopper
def test_gluon_decode_with_fewer_copies_in_flight_than_buffers_matches_reference(
        make_paged_cache, poison_past_context, relative_error, shape, num_splits, stages, in_flight, pdl):
    # The producer waits for tile i - in_flight to land before copying tile i, and the ring wraps around
    # several times in the longer contexts.
    config = DecodeConfig(block_n=64, num_stages=stages, in_flight=in_flight, gluon=True, pdl=pdl)
    result, ref = _decode(make_paged_cache, poison_past_context, shape, RAGGED_CONTEXTS, num_splits, config,
                          stages + in_flight + num_splits)
    assert not result.isnan().any()
    assert relative_error(result, ref) < BF16_TOLERANCE


# The worker's page size (`--block-size`) picks the ring: pages of whole 64-key tiles take the capped rings, the
# default 16-key pages a ring of three with every buffer's copy in flight; both as dependent launches.
@pytest.mark.parametrize(("block_size", "num_splits", "stages", "in_flight"),
                         [(16, 1, 3, 0), (16, 7, 3, 0), (64, 1, 4, 2), (64, 7, 6, 2)],
                         ids=["bs16-nosplit", "bs16-split7", "bs64-nosplit", "bs64-split7"])
@needs_hopper
def test_the_default_decode_ring_follows_the_page_size_and_matches_reference(
        make_paged_cache, poison_past_context, relative_error, block_size, num_splits, stages, in_flight):
    config = default_decode_config(2, 2, num_splits, block_size, torch.device("cuda"))
    assert config == DecodeConfig(block_n=64, num_stages=stages, target_programs=NUM_SMS_H100, gluon=True, pdl=True,
                                  in_flight=in_flight)
    result, ref = _decode(make_paged_cache, poison_past_context, (128, block_size, 4, 2), [1000, 77], num_splits,
                          None, block_size + num_splits)
    assert not result.isnan().any()
    assert relative_error(result, ref) < BF16_TOLERANCE


@pytest.mark.parametrize("num_splits", [1, 5], ids=["nosplit", "split5"])
@pytest.mark.parametrize(("stages", "in_flight"), [(2, 0), (4, 2)], ids=["s2", "s4f2"])
@needs_hopper
def test_dependent_launches_read_q_only_after_the_kernel_that_wrote_it(make_paged_cache, poison_past_context,
                                                                        relative_error, num_splits, stages,
                                                                        in_flight):
    # Each call lets the next one be scheduled as soon as it starts; the next call's q is this call's output,
    # poisoned with NaN until written. A call reading q before its wait would see NaN or a stale value.
    g = torch.Generator().manual_seed(23)
    context_lens = [3000, 64, 4097, 1]
    cache = poison_past_context(make_paged_cache(context_lens, 2, 128, 64, torch.bfloat16, "cuda", g))
    tensors = (cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens)
    config = DecodeConfig(block_n=64, num_stages=stages, in_flight=in_flight, gluon=True, pdl=True)
    q = torch.randn(4, 8, 128, generator=g).to(torch.bfloat16).cuda()
    outs = [torch.full_like(q, float("nan")) for _ in range(6)]
    torch.cuda.synchronize()
    step_in = q
    for out in outs:
        paged_decode_attention(step_in, *tensors, 128**-0.5, max_context_len=4097, num_splits=num_splits, out=out,
                               config=config)
        step_in = out
    torch.cuda.synchronize()
    step_in = q.cpu()
    cpu_tensors = [t.cpu() for t in tensors]
    for out in outs:
        ref = paged_decode_attention_ref(step_in, *cpu_tensors, 128**-0.5)
        assert not out.isnan().any()
        assert relative_error(out.cpu(), ref) < BF16_TOLERANCE
        step_in = out.cpu()  # the next step starts from what the GPU computed, so errors do not compound


@needs_hopper
def test_gluon_decode_splits_a_long_context_over_many_programs(make_paged_cache, poison_past_context,
                                                               relative_error):
    # 17 splits of 320 keys: a ring of two buffers wraps many times in every program, and the last split is short.
    config = DecodeConfig(block_n=64, num_stages=2, gluon=True)
    result, ref = _decode(make_paged_cache, poison_past_context, (128, 16, 4, 2), [5000, 3001], 17, config, 5)
    assert relative_error(result, ref) < BF16_TOLERANCE


def test_gluon_decode_says_why_it_cannot_run_on_cpu() -> None:
    q = torch.zeros(2, 8, 128, dtype=torch.bfloat16)
    cache = torch.zeros(4, 16, 2, 128, dtype=torch.bfloat16)
    reason = gluon_decode_unsupported_reason(q, cache, cache, 64)
    assert reason is not None
    assert "Gluon is not importable" in reason or "needs a CUDA device, got cpu" in reason


def test_gluon_config_runs_the_triton_kernels_where_gluon_cannot(make_paged_cache, relative_error, tolerance,
                                                                 device, dtype):
    if device == "cuda" and _on_hopper():
        pytest.skip("the Gluon kernel runs here; covered by the tests above")
    config = DecodeConfig(block_n=32 if device == "cpu" else 64, num_stages=1 if device == "cpu" else 2, gluon=True)
    g = torch.Generator().manual_seed(3)
    cache = make_paged_cache([5, 40], 2, 64, 16, dtype, device, g)
    q = torch.randn(2, 8, 64, generator=g).to(dtype).to(device)
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens, 64**-0.5)
    result = paged_decode_attention(*args, max_context_len=40, num_splits=2, config=config)
    ref = paged_decode_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert relative_error(result.cpu(), ref) < tolerance


@pytest.mark.parametrize("garbage", [2**30, -1], ids=["huge", "negative"])
@needs_hopper
def test_gluon_decode_ignores_page_ids_past_each_context(make_paged_cache, poison_past_context, relative_error,
                                                         garbage):
    # The producer copies a split's first tile before it knows the context length, looking pages up anywhere in the
    # table row: entries past a sequence's pages may hold anything (here ids outside the cache), and splits past a
    # short sequence's end copy a tile nobody reads.
    g = torch.Generator().manual_seed(11)
    context_lens = [1, 70, 1000]
    cache = poison_past_context(make_paged_cache(context_lens, 2, 128, 16, torch.bfloat16, "cuda", g))
    for i, length in enumerate(context_lens):
        cache.block_tables[i, -(-length // 16):] = garbage
    q = torch.randn(3, 8, 128, generator=g).to(torch.bfloat16).cuda()
    args = (q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens, 128**-0.5)
    result = paged_decode_attention(*args, max_context_len=1000, num_splits=7, out=torch.full_like(q, float("nan")),
                                    config=DecodeConfig(block_n=64, num_stages=2, gluon=True))
    torch.cuda.synchronize()
    ref = paged_decode_attention_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert not result.cpu().isnan().any()
    assert relative_error(result.cpu(), ref) < BF16_TOLERANCE


def test_a_negative_count_of_copies_in_flight_is_rejected_with_its_value(make_paged_cache) -> None:
    g = torch.Generator().manual_seed(2)
    cache = make_paged_cache([5, 40], 2, 64, 16, torch.float32, "cpu", g)
    q = torch.randn(2, 8, 64, generator=g)
    with pytest.raises(ValueError, match=r"in_flight must be >= 0 \(0: as many as the ring\), got -1"):
        paged_decode_attention(q, cache.key_cache, cache.value_cache, cache.block_tables, cache.context_lens,
                               64**-0.5, max_context_len=40, config=DecodeConfig(in_flight=-1, gluon=True))
