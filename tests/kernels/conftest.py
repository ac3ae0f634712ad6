"""Kernel test setup: device/dtype cases, a paged-cache builder, and bf16 tl.dot for the CPU interpreter.

Every test that takes `device` and `dtype` runs on CPU under TRITON_INTERPRET=1 in fp32, fp16 and bf16, and once
compiled on CUDA in bf16 (marked `gpu`, skipped where no GPU is present).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# Relative-norm error bounds against the fp32 reference (bf16 operands land between 1e-3 and 1e-2).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def _patch_interpreter_bf16_dot() -> None:
    """The interpreter multiplies bf16 operands as raw uint16 bits; upcast them to fp32 first."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_upcasts_bf16", False):
        return
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def upcast(x):
            if x.dtype.scalar == tl.bfloat16:
                data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32)
                return interpreter.TensorHandle(data, tl.float32)
            return x

        return original(self, upcast(a), upcast(b), d, input_precision, max_num_imprecise_acc)

    create_dot._upcasts_bf16 = True
    builder.create_dot = create_dot


if INTERPRETED:
    _patch_interpreter_bf16_dot()

_CPU_SKIP = pytest.mark.skipif(not INTERPRETED, reason="CPU kernels need TRITON_INTERPRET=1")
DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32, marks=_CPU_SKIP, id="cpu-fp32"),
    pytest.param("cpu", torch.float16, marks=_CPU_SKIP, id="cpu-fp16"),
    pytest.param("cpu", torch.bfloat16, marks=_CPU_SKIP, id="cpu-bf16"),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu, id="cuda-bf16"),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames and "dtype" in metafunc.fixturenames:
        metafunc.parametrize("device, dtype", DEVICE_DTYPES)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    if torch.isnan(out).any():
        return float("inf")
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


@dataclass
class PagedCache:
    """A K/V cache whose sequences sit on shuffled, non-contiguous pages."""

    key_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    context_lens: torch.Tensor  # [num_seqs] int32


def make_paged_cache(
    context_lens: list[int],
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str,
    generator: torch.Generator,
    spare_blocks: int = 3,
) -> PagedCache:
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.randn(shape, generator=generator).to(dtype).to(device)
    value_cache = torch.randn(shape, generator=generator).to(dtype).to(device)
    order = torch.randperm(num_blocks, generator=generator)
    # Unused table entries point at a real page (the kernels must never read past context_lens anyway).
    tables = torch.full((len(context_lens), max(blocks_per_seq + [1]) + 1), int(order[-1]), dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = order[used : used + n]
        used += n
    return PagedCache(
        key_cache, value_cache, tables.to(device), torch.tensor(context_lens, dtype=torch.int32, device=device)
    )


@pytest.fixture(name="make_paged_cache")
def _make_paged_cache_fixture():
    return make_paged_cache


def poison_past_context(cache: PagedCache) -> PagedCache:
    """NaN in every slot of a sequence's last page past its context (what a reused page may hold); in place."""
    block_size = cache.key_cache.shape[1]
    for i, length in enumerate(cache.context_lens.tolist()):
        if length % block_size:
            page = int(cache.block_tables[i, (length - 1) // block_size])
            cache.key_cache[page, length % block_size :] = float("nan")
            cache.value_cache[page, length % block_size :] = float("nan")
    return cache


@pytest.fixture(name="poison_past_context")
def _poison_past_context_fixture():
    return poison_past_context


@pytest.fixture(name="relative_error")
def _relative_error_fixture():
    return relative_error


@pytest.fixture
def tolerance(dtype: torch.dtype) -> float:
    return TOLERANCE[dtype]
