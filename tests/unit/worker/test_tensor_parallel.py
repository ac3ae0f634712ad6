"""Tensor parallelism on CPU with gloo: TP=2 and TP=4 ranks (rank 0 stepping plans, the others following it)
generate the greedy tokens of one device, and their logits agree with its logits within fp32 rounding.

Tolerance: the ranks compute the same products as one device, but a row-parallel projection sums its dot product
in tp partial sums that an all-reduce adds, and smaller GEMMs may block their reductions differently; fp32 carries
24 bits, so each logit may differ in its last few bits times the number of such sums on its path (two layers, two
all-reduces each). Logits here are O(1) to O(10): 2e-5 absolute and relative allows that and nothing else (a head
or a column in the wrong place changes logits by O(0.1) or more).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.unit.worker.helpers import make_checkpoint
from tests.unit.worker.tensor_parallel_ranks import generate_and_score, run_rank

# kind → config overrides; llama_tied with 250 ids divides its vocabulary unevenly (4 ranks: 63, 63, 63, 61).
KINDS = {"llama": {}, "qwen2": {}, "qwen3": {}, "llama_tied": {"vocab_size": 250}, "mistral_mqa_sharded": {}}
TOLERANCE = dict(rtol=2e-5, atol=2e-5)
RANKS_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:  # noqa: ANN001
    return [make_checkpoint(kind, tmp_path_factory.mktemp(kind), **overrides) for kind, overrides in KINDS.items()]


@pytest.fixture(scope="module")
def single_device(checkpoints) -> dict[str, dict]:  # noqa: ANN001
    return generate_and_score(checkpoints)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(size: int, folders: list[Path], out: Path, device: str = "cpu") -> list[dict[str, dict]]:
    """Spawns `size` ranks; each saves what it generated and scored; fails if any rank fails or overruns."""
    context = mp.spawn(run_rank, args=(size, free_port(), folders, out, device), nprocs=size, join=False)
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{size} tensor-parallel ranks did not finish within {RANKS_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out / f"rank{rank}.pt") for rank in range(size)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("size", [2, 4])
def test_tensor_parallel_ranks_generate_the_single_device_tokens_and_logits(size, checkpoints, single_device,
                                                                            tmp_path) -> None:  # noqa: ANN001
    check_ranks(run_ranks(size, checkpoints, tmp_path), size, checkpoints, single_device, TOLERANCE)


@pytest.mark.gpu
@pytest.mark.timeout(180)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_nccl_ranks_on_two_gpus_generate_the_single_gpu_tokens_and_logits(checkpoints, tmp_path) -> None:  # noqa: ANN001
    # fp32 through the Triton kernels on both sides; the kernels' own tiling adds rounding of its own, hence 1e-4.
    reference = generate_and_score(checkpoints, device="cuda")
    check_ranks(run_ranks(2, checkpoints, tmp_path, "cuda"), 2, checkpoints, reference, dict(rtol=1e-4, atol=1e-4))


def check_ranks(ranks: list[dict[str, dict]], size: int, checkpoints: list[Path], single_device: dict[str, dict],
                tolerance: dict[str, float]) -> None:
    for folder in checkpoints:
        reference = single_device[folder.name]
        for rank, results in enumerate(ranks):
            got = results[folder.name]
            assert got["tokens"] == (reference["tokens"] if rank == 0 else None), (folder.name, rank)
            torch.testing.assert_close(got["prefill"], reference["prefill"], **tolerance)
            torch.testing.assert_close(got["decode"], reference["decode"], **tolerance)
            # every rank holds the same blocks, each with its share of the KV heads (one when they are replicated)
            heads = max(1, reference["kv_heads"] // size)
            assert got["kv_heads"] == heads, (folder.name, rank)
            expected_cache = list(reference["kv_cache"])
            expected_cache[4] = heads
            assert list(got["kv_cache"]) == expected_cache, (folder.name, rank)


def test_fp8_projections_fake_mode_and_a_size_other_than_the_group_are_refused(checkpoints) -> None:  # noqa: ANN001
    from services.common.errors import InvalidArgument
    from services.worker.config import WorkerConfig
    from services.worker.build import build_engine
    from services.worker.parallel.group import TensorParallelGroup
    from services.worker.server import build_config

    folder = str(checkpoints[0])
    rank0 = TensorParallelGroup(0, 2)  # refused before any collective, so no process group is needed
    with pytest.raises(InvalidArgument, match="FP8 projections under tensor parallelism are not supported yet"):
        build_engine(WorkerConfig(model=folder, device="cpu", quantization="fp8", tensor_parallel_size=2), tp=rank0)
    with pytest.raises(InvalidArgument, match="--tensor-parallel-size 4 asked for, but this process is one of 2"):
        build_engine(WorkerConfig(model=folder, device="cpu", tensor_parallel_size=4), tp=rank0)
    with pytest.raises(InvalidArgument, match="fake mode has none"):
        WorkerConfig(model="llama-3.2-1b", load_format="fake", tensor_parallel_size=2)
    assert build_config(["--model", folder, "--tensor-parallel-size", "2"]).tensor_parallel_size == 2
