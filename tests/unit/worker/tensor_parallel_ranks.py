"""What each rank of a tensor-parallel test runs: the same greedy generation and logits as a single-device engine.

`run_rank` is the entry point of spawned processes (gloo on loopback); `generate_and_score` runs in the test process
too, for the single-device reference.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from services.worker.attention_metadata import SeqChunk, build_attention_metadata
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from services.worker.engine import WorkerEngine
from services.worker.kv_cache import KVCache
from services.worker.model_engine import resolve_device
from services.worker.parallel.group import TensorParallelGroup, join_group, leave_group
from services.worker.parallel.steps import follow
from tests.unit.worker.helpers import Driver, run_greedy

PROMPTS = {1: [5, 17, 99, 3, 200, 41, 7, 7, 128, 64, 33, 2, 200, 11, 90, 150, 6, 73, 12],
           2: [9, 8, 7, 6, 5, 4, 3, 2, 1, 240, 100, 30]}
NUM_TOKENS = 8
BLOCK_SIZE = 16


def build(folder: Path, tp: TensorParallelGroup | None = None, device: str = "cpu") -> WorkerEngine:
    size = 1 if tp is None else tp.size
    config = WorkerConfig(model=str(folder), device=device, dtype="float32", num_kv_blocks=64, max_model_len=256,
                          block_size=BLOCK_SIZE, tensor_parallel_size=size)
    return build_engine(config, tp=tp)


@torch.inference_mode()
def step_logits(engine: WorkerEngine) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits of every prompt position (both prompts prefilled in one step) [sum of lengths, vocab], then of
    one decode step of both sequences feeding each its prefill argmax [2, vocab]; on a fresh KV cache."""
    model = engine.model
    device = model.model.embed_tokens.weight.device
    cache = KVCache(model.cfg, 8, BLOCK_SIZE, torch.float32, device)  # this rank's KV heads
    blocks = {1: [0, 1], 2: [5, 3]}
    chunks = [SeqChunk(0, len(PROMPTS[s]), blocks[s]) for s in PROMPTS]
    ids = torch.tensor([t for s in PROMPTS for t in PROMPTS[s]], device=device)
    prefill = model.compute_logits(model(ids, build_attention_metadata(chunks, BLOCK_SIZE, ids.device), cache.layers))
    last = torch.tensor([len(PROMPTS[1]) - 1, len(ids) - 1], device=device)
    next_ids = prefill[last].argmax(-1)
    chunks = [SeqChunk(len(PROMPTS[s]), 1, blocks[s]) for s in PROMPTS]
    decode = model.compute_logits(model(next_ids, build_attention_metadata(chunks, BLOCK_SIZE, ids.device),
                                        cache.layers))
    return prefill.cpu(), decode.cpu()


def generate_and_score(folders: list[Path], tp: TensorParallelGroup | None = None,
                       device: str = "cpu") -> dict[str, dict]:
    """Per checkpoint: greedy tokens (chunked prefill of 7 tokens, both sequences in every step; rank 0 drives
    the plans, the other ranks follow and report none) and step logits."""
    results = {}
    for folder in folders:
        engine = build(folder, tp, device)
        tokens = None
        if tp is None:
            tokens = run_greedy(Driver(engine), PROMPTS, NUM_TOKENS, chunk=7)
        elif tp.rank == 0:
            tokens = run_greedy(Driver(engine), PROMPTS, NUM_TOKENS, chunk=7)
            engine.runner.stop()
        else:
            follow(engine.runner, tp)
        prefill, decode = step_logits(engine)
        runner = getattr(engine.runner, "runner", engine.runner)  # rank 0's Runner is inside its LeaderRunner
        results[folder.name] = {"tokens": tokens, "prefill": prefill, "decode": decode,
                                "kv_heads": engine.model.cfg.num_kv_heads,
                                "kv_cache": runner.executor.kv_cache.data.shape}
    return results


def run_rank(rank: int, size: int, port: int, folders: list[Path], out: Path, device: str = "cpu") -> None:
    """gloo on "cpu", NCCL on "cuda" (rank r on cuda:r)."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    tp = join_group(rank, size, f"tcp://127.0.0.1:{port}", resolve_device(device, rank), timeout_s=60)
    try:
        torch.save(generate_and_score(folders, tp, device), out / f"rank{rank}.pt")
    finally:
        leave_group()
