"""On a CUDA GPU: the Triton kernels, CUDA graphs and eager references all give transformers' greedy tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from tests.unit.worker.helpers import Driver, hf_greedy, make_checkpoint, run_greedy

pytestmark = pytest.mark.gpu

PROMPTS = {1: [5, 17, 99, 3, 250, 41, 7, 7, 128, 64, 33, 2, 200, 11, 90, 150, 6, 73, 12],
           2: [9, 8, 7, 6, 5], 3: [(i * 37) % 256 for i in range(45)]}


@pytest.fixture(scope="module", params=["llama3_rope", "qwen3", "mistral_mqa_sharded"])
def folder(request, tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def _engine(folder: Path, use_kernels: bool, enforce_eager: bool, dtype: str = "float32"):  # noqa: ANN202
    config = WorkerConfig(model=str(folder), device="cuda", dtype=dtype, num_kv_blocks=64, max_model_len=256,
                          max_num_seqs=8, max_num_batched_tokens=512, enforce_eager=enforce_eager)
    return build_engine(config, use_kernels=use_kernels)


def test_kernels_with_cuda_graphs_match_references_and_transformers(folder: Path) -> None:
    expected = {seq_id: hf_greedy(folder, p, 32)[0] for seq_id, p in PROMPTS.items()}
    with_refs = run_greedy(Driver(_engine(folder, use_kernels=False, enforce_eager=True)), PROMPTS, 32)
    with_kernels = run_greedy(Driver(_engine(folder, use_kernels=True, enforce_eager=False)), PROMPTS, 32, chunk=16)
    eager_kernels = run_greedy(Driver(_engine(folder, use_kernels=True, enforce_eager=True)), PROMPTS, 32)
    assert with_refs == expected
    assert with_kernels == with_refs
    assert eager_kernels == with_refs


def test_bf16_kernel_logits_stay_close_to_bf16_reference_logits(folder: Path) -> None:
    # Greedy tokens may flip on bf16 near-ties (the two round in different places), so logits are compared.
    from services.worker.attention_metadata import SeqChunk

    prompt = PROMPTS[3]
    chunk = [SeqChunk(0, len(prompt), [0, 1, 2])]
    logits = []
    for use_kernels in (False, True):
        runner = _engine(folder, use_kernels=use_kernels, enforce_eager=True, dtype="bfloat16").runner
        logits.append(runner.executor.forward(prompt, chunk, [0])[0])
    scale = float(logits[0].abs().max())
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0.03 * scale)
    assert int(logits[1].argmax()) == int(logits[0].argmax())


def test_dummy_preset_profiles_memory_and_captures_graphs() -> None:
    config = WorkerConfig(model="qwen2.5-0.5b", load_format="dummy", max_model_len=2048, max_num_seqs=32,
                          max_num_batched_tokens=2048, gpu_memory_utilization=0.5)
    engine = build_engine(config)
    runner = engine.runner.executor
    assert engine.info.num_kv_blocks > 1000 and engine.info.dtype == "bfloat16"
    assert runner.graphs is not None and runner.graphs.buckets == [1, 2, 4, 8, 16, 24, 32]
    free, total = torch.cuda.mem_get_info()
    assert total - free <= 0.6 * total  # 0.5 for weights, activations and KV; the rest is graphs and sampler
    out = run_greedy(Driver(engine), {1: [1, 2, 3, 4], 2: [5, 6, 7]}, 8)
    assert all(len(v) == 8 for v in out.values())
