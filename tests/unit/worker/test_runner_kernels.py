"""The decoder's calls into the Triton launchers (run by the interpreter on CPU) give the references' tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from tests.unit.worker.helpers import Driver, make_checkpoint, run_greedy

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter")


LONG = [5, 17, 99, 3, 250, 41, 7, 7, 128, 64, 33, 2, 200, 11, 90, 150, 6, 73, 12]


# Short first: from the second step on, seq 2 decodes ahead of seq 1's prefill chunks, so those steps are mixed
# and split between the decode and prefill kernels.
@pytest.mark.parametrize("short_first", [False, True])
@pytest.mark.parametrize("name", ["qwen3", "mistral_mqa_sharded"])
def test_kernel_launchers_give_the_reference_greedy_tokens(name: str, short_first: bool, tmp_path: Path) -> None:
    folder = make_checkpoint(name, tmp_path / name)
    prompts = {2: [9, 8, 7], 1: LONG} if short_first else {1: LONG, 2: [9, 8, 7]}

    def engine(use_kernels: bool):  # noqa: ANN202
        config = WorkerConfig(model=str(folder), device="cpu", dtype="float32", num_kv_blocks=16, max_model_len=64)
        return build_engine(config, use_kernels=use_kernels)

    refs = run_greedy(Driver(engine(False)), prompts, 4, chunk=8)
    assert run_greedy(Driver(engine(True)), prompts, 4, chunk=8) == refs


@pytest.mark.parametrize("short_first", [False, True])
def test_fp8_weights_and_fp8_kv_cache_through_the_kernels_give_the_reference_greedy_tokens(
        short_first: bool, tmp_path: Path) -> None:
    # The FP8 GEMV for every projection, scaled FP8 cache writes, and the decode and prefill kernels reading FP8 tiles,
    # in prefill, chunked and mixed steps.
    folder = make_checkpoint("qwen3", tmp_path / "qwen3")
    prompts = {2: [9, 8, 7], 1: LONG} if short_first else {1: LONG, 2: [9, 8, 7]}

    def engine(use_kernels: bool):  # noqa: ANN202
        config = WorkerConfig(model=str(folder), device="cpu", dtype="float32", num_kv_blocks=16, max_model_len=64,
                              quantization="fp8", kv_cache_dtype="fp8")
        return build_engine(config, use_kernels=use_kernels)

    refs = run_greedy(Driver(engine(False)), prompts, 4, chunk=8)
    assert run_greedy(Driver(engine(True)), prompts, 4, chunk=8) == refs
