"""Launch memos (kernels/launch_memo.py): equal inputs reuse a value, any differing fact gets a value of its own, and
memoized launches give results bit-identical to launches that derive everything afresh."""

from __future__ import annotations

import gc

import pytest
import torch

from kernels import paged_decode_attention, paged_decode_attention_ref, paged_prefill_attention
from kernels._paged_tile import _TILE_DESCRIPTORS, cache_tile_descriptors
from kernels.decode_attention import DecodeConfig, default_decode_config
from kernels.decode_gluon import _DECODE_REASONS, gluon_decode_unsupported_reason
from kernels.launch_memo import DeviceFacts, SignatureMemo, TensorMemo, clear_launch_memos
from kernels.prefill_attention import PrefillConfig, default_prefill_config
from kernels.prefill_gluon import (
    _CACHE_DESCRIPTORS,
    _PREFILL_REASONS,
    HopperPrefillConfig,
    cache_descriptor,
    default_hopper_prefill_config,
    gluon_layout_signature,
    hopper_prefill_unsupported_reason,
    shared_layout,
)
from kernels.prefill_gluon_kernel import gluon

needs_gluon = pytest.mark.skipif(gluon is None, reason="Gluon is not importable with this Triton")


def _cache(num_blocks: int = 6, block_size: int = 16, num_kv_heads: int = 2, head_dim: int = 64,
           dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype)


def test_device_facts_probe_each_device_index_once_until_cleared() -> None:
    probed: list[int] = []

    def probe(index: int) -> tuple[int, int]:
        probed.append(index)
        return (9, index)

    facts = DeviceFacts(probe)
    assert facts(torch.device("cuda", 0)) == (9, 0)
    assert facts(torch.device("cuda", 0)) == (9, 0)
    assert facts(torch.device("cuda", 1)) == (9, 1)
    assert probed == [0, 1]
    clear_launch_memos()
    assert facts(torch.device("cuda", 1)) == (9, 1)
    assert probed == [0, 1, 1]


def test_signature_memo_computes_once_per_key_and_starts_over_when_full() -> None:
    memo: SignatureMemo[str] = SignatureMemo(max_entries=2)
    calls: list[str] = []

    def compute(value: str):  # noqa: ANN202
        return lambda: calls.append(value) or value

    assert memo.get(("a", 1), compute("first")) == "first"
    assert memo.get(("a", 1), compute("second")) == "first"
    assert memo.get(("a", 2), compute("third")) == "third"
    assert calls == ["first", "third"]
    assert memo.get(("b", 1), compute("fourth")) == "fourth"  # a third key: the memo starts over
    assert len(memo) == 1
    assert memo.get(("a", 1), compute("fifth")) == "fifth"
    assert calls == ["first", "third", "fourth", "fifth"]


def test_tensor_memo_reuses_a_value_for_the_same_memory_and_layout_only() -> None:
    memo: TensorMemo[tuple] = TensorMemo()
    built: list[tuple] = []

    def build(view: torch.Tensor) -> tuple:
        built.append((view.data_ptr(), tuple(view.shape), view.stride(), view.dtype))
        return built[-1]

    storage = torch.zeros(6 * 16 * 4 * 64 + 64, dtype=torch.bfloat16)
    cache = storage[: 6 * 16 * 2 * 64].view(6, 16, 2, 64)
    first = memo.get(cache, 16, build)
    assert memo.get(cache, 16, build) is first
    assert memo.get(cache.view(6, 16, 2, 64), 16, build) is first  # another view of the same memory and layout
    differing = {
        "box": (cache, 8),
        "data_ptr": (storage[64 : 64 + 6 * 16 * 2 * 64].view(6, 16, 2, 64), 16),
        "shape": (storage[: 3 * 16 * 2 * 64].view(3, 16, 2, 64), 16),
        # Same pointer and shape, rows twice as far apart.
        "strides": (storage[: 6 * 16 * 4 * 64].view(6, 16, 4, 64)[:, :, :2], 16),
        "dtype": (cache.view(torch.float16), 16),
    }
    values = {name: memo.get(tensor, params, build) for name, (tensor, params) in differing.items()}
    assert len({id(v) for v in values.values()} | {id(first)}) == 6
    assert values["strides"] == (cache.data_ptr(), (6, 16, 2, 64), (4096, 256, 64, 1), torch.bfloat16)
    assert values["dtype"] == (cache.data_ptr(), (6, 16, 2, 64), (2048, 128, 64, 1), torch.float16)
    assert len(built) == 6


def test_tensor_memo_drops_an_entry_when_its_tensor_is_gone() -> None:
    memo: TensorMemo[torch.Tensor] = TensorMemo()
    cache = _cache()
    view_of_entry = memo.get(cache, 16, lambda view: view)
    assert len(memo) == 1
    assert view_of_entry is not cache and view_of_entry.data_ptr() == cache.data_ptr()
    del cache, view_of_entry
    gc.collect()
    assert len(memo) == 0


@needs_gluon
def test_cache_descriptor_is_built_once_per_cache_and_box() -> None:
    key_cache, value_cache = _cache(), _cache()
    desc = cache_descriptor(key_cache, 16)
    assert cache_descriptor(key_cache, 16) is desc
    assert desc.base.data_ptr() == key_cache.data_ptr()
    assert (desc.shape, desc.strides, desc.block_shape) == ([96, 128], [128, 1], [16, 64])
    assert desc.layout == shared_layout((16, 64), torch.bfloat16)
    other = cache_descriptor(value_cache, 16)
    assert other is not desc and other.base.data_ptr() == value_cache.data_ptr()
    smaller_box = cache_descriptor(key_cache, 8)
    assert smaller_box.block_shape == [8, 64]
    fp16 = cache_descriptor(key_cache.view(torch.float16), 16)
    assert fp16 is not desc and fp16.base.dtype == torch.float16


@needs_gluon
def test_cache_descriptors_go_with_their_caches() -> None:
    clear_launch_memos()
    caches = [_cache() for _ in range(4)]
    for cache in caches:
        cache_descriptor(cache, 16)
    assert len(_CACHE_DESCRIPTORS) == 4
    del caches, cache
    gc.collect()
    assert len(_CACHE_DESCRIPTORS) == 0


@needs_gluon
def test_shared_layout_is_memoized_and_equals_gluons_default() -> None:
    from triton.experimental.gluon import language as gl

    layout = shared_layout((64, 128), torch.bfloat16)
    assert shared_layout((64, 128), torch.bfloat16) is layout
    assert layout == gl.NVMMASharedLayout.get_default_for([64, 128], gl.bfloat16)
    assert shared_layout((64, 128), torch.float16) == gl.NVMMASharedLayout.get_default_for([64, 128], gl.float16)
    assert shared_layout((16, 64), torch.bfloat16) == gl.NVMMASharedLayout.get_default_for([16, 64], gl.bfloat16)


def test_tile_descriptors_are_built_once_per_cache_and_block_n() -> None:
    clear_launch_memos()
    key_cache, value_cache = _cache(block_size=32), _cache(block_size=32)
    k_desc, v_desc = cache_tile_descriptors(key_cache, value_cache, 16)
    assert cache_tile_descriptors(key_cache, value_cache, 16) == (k_desc, v_desc)
    assert cache_tile_descriptors(key_cache, value_cache, 16)[0] is k_desc
    assert (k_desc.shape, k_desc.strides, k_desc.block_shape) == ([192, 128], [128, 1], [16, 64])
    wider = cache_tile_descriptors(key_cache, value_cache, 32)[0]
    assert wider is not k_desc and wider.block_shape == [32, 64]
    assert len(_TILE_DESCRIPTORS) == 4


def test_layout_signature_is_shared_by_a_steps_layers_and_differs_in_every_fact_read() -> None:
    q = torch.zeros(40, 8, 64, dtype=torch.bfloat16)
    key_cache, value_cache = _cache(), _cache()
    base = gluon_layout_signature(q, key_cache, value_cache)
    assert gluon_layout_signature(q[:7], _cache(), _cache()) == base  # another layer, another token count
    flat = torch.zeros(41 * 8 * 64, dtype=torch.bfloat16)
    wide = torch.zeros(6, 16, 4, 64, dtype=torch.bfloat16)
    unaligned = torch.zeros(6 * 16 * 2 * 64 + 1, dtype=torch.bfloat16)[1:].view(6, 16, 2, 64)
    differing = {
        "q dtype": (q.half(), key_cache, value_cache),
        "q heads": (q[:, :4], key_cache, value_cache),
        "q strides": (torch.zeros(40, 16, 64, dtype=torch.bfloat16)[:, :8], key_cache, value_cache),
        "q alignment": (flat[1 : 1 + 40 * 8 * 64].view(40, 8, 64), key_cache, value_cache),
        "cache shape": (q, _cache(num_blocks=7), _cache(num_blocks=7)),
        "cache strides": (q, wide[:, :, :2], wide[:, :, 2:]),
        "cache dtype": (q, key_cache.half(), value_cache.half()),
        "value alignment": (q, key_cache, unaligned),
    }
    signatures = {name: gluon_layout_signature(*args) for name, args in differing.items()}
    assert all(sig != base for sig in signatures.values())
    assert len(set(signatures.values())) == len(differing)


def test_kernel_path_is_decided_once_per_signature() -> None:
    clear_launch_memos()
    q = torch.zeros(40, 8, 64, dtype=torch.bfloat16)
    for _ in range(3):  # three layers of one step
        assert hopper_prefill_unsupported_reason(q, _cache(), _cache()) == "needs a CUDA device, got cpu"
        assert gluon_decode_unsupported_reason(q[:4], _cache(), _cache(), 64) == "needs a CUDA device, got cpu"
    assert (len(_PREFILL_REASONS), len(_DECODE_REASONS)) == (1, 1)
    hopper_prefill_unsupported_reason(q, _cache(), _cache(), HopperPrefillConfig(block_n=64))
    gluon_decode_unsupported_reason(q[:4], _cache(), _cache(), 128)
    hopper_prefill_unsupported_reason(q.half(), _cache(dtype=torch.float16), _cache(dtype=torch.float16))
    assert (len(_PREFILL_REASONS), len(_DECODE_REASONS)) == (3, 2)


def test_default_configs_are_memoized_per_argument() -> None:
    clear_launch_memos()
    assert default_prefill_config(64, 16) is default_prefill_config(64, 16)
    assert default_prefill_config(128, 16) == PrefillConfig(block_m=128, block_n=64, num_warps=4, num_stages=3,
                                                            page_loads=0, split_rows=True)
    assert default_hopper_prefill_config(64, 16) is default_hopper_prefill_config(64, 16)
    assert default_hopper_prefill_config(128, 16) == HopperPrefillConfig()
    cpu = torch.device("cpu")
    assert default_decode_config(4, 8, 1, 16, cpu) is default_decode_config(4, 8, 1, 16, cpu)
    assert default_decode_config(4, 8, 1, 16, cpu) == DecodeConfig(block_n=128, num_stages=3)
    assert default_decode_config(64, 8, 4, 16, cpu) == DecodeConfig()
    first = default_decode_config(4, 8, 1, 16, cpu)
    clear_launch_memos()
    assert default_decode_config(4, 8, 1, 16, cpu) is not first


def _decode_layers(device: str, dtype: torch.dtype, config: DecodeConfig | None, num_layers: int = 3):
    """Decode over num_layers caches of one shape (one allocation, as the worker's), each with its own content."""
    g = torch.Generator().manual_seed(11)
    lens = [20, 45]
    block_size, num_kv_heads, head_dim = 32, 2, 64
    data = torch.randn(num_layers, 2, 4, block_size, num_kv_heads, head_dim, generator=g).to(dtype).to(device)
    tables = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32, device=device)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    q = torch.randn(2, 4, head_dim, generator=g).to(dtype).to(device)
    outs = []
    for layer in data:
        outs.append(paged_decode_attention(q, layer[0], layer[1], tables, context_lens, head_dim**-0.5,
                                           max_context_len=64, num_splits=1, config=config))
    return data, tables, context_lens, q, outs


def test_memoized_decode_launches_match_fresh_ones_bit_for_bit(device, dtype, relative_error, tolerance) -> None:
    # TMA tiles on the CPU interpreter and the default (Gluon on Hopper) on CUDA: each layer's cache its own
    # descriptors, and the same results whether the memos were warm or cleared before every call.
    config = DecodeConfig(block_n=16, num_stages=1, tma=True) if device == "cpu" else None
    data, tables, context_lens, q, warm = _decode_layers(device, dtype, config)
    for i, layer in enumerate(data):
        clear_launch_memos()
        cold = paged_decode_attention(q, layer[0], layer[1], tables, context_lens, 64**-0.5, max_context_len=64,
                                      num_splits=1, config=config)
        assert torch.equal(cold, warm[i])
        ref = paged_decode_attention_ref(q.cpu(), layer[0].cpu(), layer[1].cpu(), tables.cpu(), context_lens.cpu(),
                                         64**-0.5)
        assert relative_error(warm[i].cpu(), ref) < tolerance
    assert not torch.equal(warm[0], warm[1])


@pytest.mark.gpu
def test_memoized_prefill_launches_match_fresh_ones_bit_for_bit_on_cuda(relative_error) -> None:
    from kernels import paged_prefill_attention_ref

    g = torch.Generator().manual_seed(5)
    dtype, device, head_dim = torch.bfloat16, "cuda", 128
    data = torch.randn(4, 2, 8, 16, 8, head_dim, generator=g).to(dtype).to(device)  # 4 layers, 8 pages of 16
    tables = torch.tensor([[3, 1, 6, 0], [2, 5, 4, 7]], dtype=torch.int32, device=device)
    context_lens = torch.tensor([50, 64], dtype=torch.int32, device=device)
    starts = torch.tensor([0, 30, 94], dtype=torch.int32, device=device)
    q = torch.randn(94, 32, head_dim, generator=g).to(dtype).to(device)
    warm = [paged_prefill_attention(q, layer[0], layer[1], tables, starts, context_lens, head_dim**-0.5)
            for layer in data]
    for i, layer in enumerate(data):
        clear_launch_memos()
        cold = paged_prefill_attention(q, layer[0], layer[1], tables, starts, context_lens, head_dim**-0.5)
        assert torch.equal(cold, warm[i])
        ref = paged_prefill_attention_ref(q.cpu(), layer[0].cpu(), layer[1].cpu(), tables.cpu(), starts.cpu(),
                                          context_lens.cpu(), head_dim**-0.5)
        assert relative_error(warm[i].cpu(), ref) < 1.5e-2
    assert not torch.equal(warm[0], warm[1])
