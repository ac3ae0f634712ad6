"""Shared test configuration: the `gpu` marker skips where no CUDA device is usable; the Triton interpreter
rounds to FP8 as the GPU does (kernel tests and the worker's interpreted kernels both store FP8)."""

from __future__ import annotations

import os

import pytest


def _patch_interpreter_fp8_rounding() -> None:
    """The interpreter rounds to fp8 half-up and lets a mantissa carry spill into the exponent (125.6 → 64 in
    float8_e4m3fn); round as the GPU's cvt does (to nearest even, like torch) instead."""
    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_fp_to_fp, "_rounds_fp8", False):
        return
    original = builder.create_fp_to_fp

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if dst_type.scalar == tl.float8e4nv and src.dtype.scalar in (tl.float32, tl.float16):
            values = torch.from_numpy(np.ascontiguousarray(src.data).astype(np.float32))
            data = values.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
            return interpreter.TensorHandle(data, dst_type.scalar)
        return original(self, src, dst_type, rounding_mode)

    create_fp_to_fp._rounds_fp8 = True
    builder.create_fp_to_fp = create_fp_to_fp


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_fp8_rounding()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
