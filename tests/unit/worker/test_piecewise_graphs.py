"""The piecewise step (every layer cut at attention, tokens padded to a bucket) computes what the whole model does.
On the CPU the pieces run eagerly on the same padded buffers that CUDA graphs replay (tests/integration has the
captured graphs on the GPU)."""

from __future__ import annotations

import os

import pytest
import torch

from services.common.errors import InvalidArgument
from services.worker.attention_metadata import SeqChunk
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from services.worker.piecewise_graphs import PiecewiseGraphs, token_buckets
from tests.unit.worker.helpers import Driver, cpu_engine, hf_greedy, make_checkpoint, run_greedy

PROMPT = [5, 17, 99, 3, 250, 41, 7, 7, 128, 64, 33, 2, 200, 11, 90, 150, 6, 73, 12]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def folder(request, tmp_path_factory):  # noqa: ANN001, ANN201
    return make_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def piecewise_engine(folder, max_tokens: int = 64, engine=None):  # noqa: ANN001, ANN201
    engine = engine or cpu_engine(folder)
    runner = engine.runner.executor
    runner.piecewise = PiecewiseGraphs(runner.model, runner.kv_cache, max_tokens)
    return engine


def test_token_buckets_step_by_128_up_to_1024_then_by_256_up_to_the_limit() -> None:
    assert token_buckets(2048) == [16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048]
    assert token_buckets(1100) == [16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 1024, 1104]
    assert token_buckets(100) == [16, 32, 64, 112]
    assert token_buckets(9000)[-5:] == [8192, 8448, 8704, 8960, 9008]  # the grid goes on past 8,192
    assert token_buckets(8) == [16]


def test_a_padded_prefill_gives_the_logits_of_the_whole_model(folder) -> None:  # noqa: ANN001
    runner = piecewise_engine(folder).runner.executor
    blocks = list(range(-(-len(PROMPT) // 16)))
    got = runner.forward(PROMPT, [SeqChunk(0, len(PROMPT), blocks)], [0])[0]  # 19 tokens padded to 32
    runner.piecewise = None
    expected = runner.forward(PROMPT, [SeqChunk(0, len(PROMPT), blocks)], [0])[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mixed_steps_through_the_pieces_keep_transformers_greedy_tokens(folder) -> None:  # noqa: ANN001
    """Seq 2 decodes ahead of seq 1's prompt chunks: decode and prefill attention between the same pieces."""
    prompts = {2: PROMPT[:4], 1: (PROMPT * 3)[:40]}
    expected = {seq_id: hf_greedy(folder, p, 12)[0] for seq_id, p in prompts.items()}
    assert run_greedy(Driver(piecewise_engine(folder)), prompts, 12, chunk=9) == expected


def test_steps_larger_than_the_largest_bucket_run_the_whole_model(folder) -> None:  # noqa: ANN001
    prompts = {1: (PROMPT * 4)[:70], 2: PROMPT}
    expected = {seq_id: hf_greedy(folder, p, 4)[0] for seq_id, p in prompts.items()}
    assert run_greedy(Driver(piecewise_engine(folder, max_tokens=32)), prompts, 4) == expected


def test_fp8_weights_and_cache_through_the_pieces_keep_the_whole_models_output(folder) -> None:  # noqa: ANN001
    """The FP8 projections run on padded rows and the FP8 cache is written inside the pieces, read by the attention
    between them (tests/unit/worker/test_runner_kernels.py runs the same FP8 model through the kernels)."""
    def engine():  # noqa: ANN202
        return cpu_engine(folder, num_kv_blocks=32, quantization="fp8", kv_cache_dtype="fp8")

    runner = piecewise_engine(folder, engine=engine()).runner.executor
    blocks = list(range(-(-len(PROMPT) // 16)))
    got = runner.forward(PROMPT, [SeqChunk(0, len(PROMPT), blocks)], [0])[0]  # 19 tokens padded to 32
    runner.piecewise = None
    expected = runner.forward(PROMPT, [SeqChunk(0, len(PROMPT), blocks)], [0])[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    prompts = {2: PROMPT[:4], 1: (PROMPT * 3)[:40]}
    whole = run_greedy(Driver(engine()), prompts, 6, chunk=9)
    assert run_greedy(Driver(piecewise_engine(folder, engine=engine())), prompts, 6, chunk=9) == whole


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter")
def test_kernel_launches_between_the_pieces_keep_the_references_tokens(folder) -> None:  # noqa: ANN001
    """The launchers through the pieces (interpreted on the CPU): each step's first layer's calls check their
    arguments, the later layers' are marked checked, in prefill, mixed and decode steps."""
    prompts = {2: PROMPT[:4], 1: (PROMPT * 3)[:40]}
    expected = run_greedy(Driver(cpu_engine(folder)), prompts, 5, chunk=9)
    config = WorkerConfig(model=str(folder), device="cpu", dtype="float32", num_kv_blocks=128, max_model_len=256)
    engine = piecewise_engine(folder, engine=build_engine(config, use_kernels=True))
    assert engine.runner.executor.model.model.layers[0].self_attn.ops.uses_kernels
    assert len(engine.runner.executor.model.model.layers) >= 2
    assert run_greedy(Driver(engine), prompts, 5, chunk=9) == expected


def test_a_negative_piecewise_token_limit_is_refused_and_zero_is_accepted() -> None:
    with pytest.raises(InvalidArgument, match="piecewise_max_tokens must be non-negative, got -1"):
        WorkerConfig(model="llama-3.2-1b", load_format="dummy", piecewise_max_tokens=-1)
    assert WorkerConfig(model="llama-3.2-1b", load_format="dummy", piecewise_max_tokens=0).piecewise_max_tokens == 0
