"""On a CUDA GPU: decode graphs per context bucket and the in-graph argmax give the tokens of eager execution."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from services.common.sampling import SamplingParams
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from services.worker.cuda_graphs import DecodeGraphs
from tests.unit.worker.helpers import Driver, make_checkpoint, run_greedy

pytestmark = pytest.mark.gpu

PROMPTS = {1: [5, 17, 99, 3, 250, 41, 7, 7, 128, 64, 33, 2, 200, 11, 90, 150, 6, 73, 12],
           2: [9, 8, 7, 6, 5], 3: [(i * 37) % 256 for i in range(45)]}


@pytest.fixture(scope="module", params=["llama3_rope", "mistral_mqa_sharded"])
def folder(request, tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def _engine(folder: Path, use_kernels: bool, enforce_eager: bool):  # noqa: ANN202
    config = WorkerConfig(model=str(folder), device="cuda", dtype="float32", num_kv_blocks=64, max_model_len=256,
                          max_num_seqs=8, max_num_batched_tokens=512, enforce_eager=enforce_eager)
    return build_engine(config, use_kernels=use_kernels)


def test_decodes_crossing_from_the_short_context_graph_to_the_full_one_keep_the_reference_tokens(folder: Path) -> None:
    refs = run_greedy(Driver(_engine(folder, use_kernels=False, enforce_eager=True)), PROMPTS, 32)
    engine = _engine(folder, use_kernels=True, enforce_eager=False)
    model_runner = engine.runner.executor
    # Contexts of 6 to 77 tokens: sequences 1 and 2 start in the 32-token graph and move to the 256-token one.
    graphs = DecodeGraphs(model_runner.model, model_runner.kv_cache, 8, 256, short_context_len=32)
    graphs.capture()
    model_runner.graphs = graphs
    assert (4, 32) in graphs.graphs and (4, 256) in graphs.graphs
    assert run_greedy(Driver(engine), PROMPTS, 32) == refs


def _run_mixed(engine, num_tokens: int) -> dict[int, list[int]]:  # noqa: ANN001
    """Greedy, greedy-with-logprobs and seeded sampled rows in one batch (the sampler path after a graph)."""
    params = {1: SamplingParams(max_tokens=64, ignore_eos=True),
              2: SamplingParams(max_tokens=64, ignore_eos=True, temperature=0.8, seed=7),
              3: SamplingParams(max_tokens=64, ignore_eos=True, logprobs=2)}
    driver = Driver(engine)
    out: dict[int, list[int]] = {seq_id: [] for seq_id in PROMPTS}
    new = [dataclasses.replace(driver.new_seq(seq_id, p, len(p)), sampling=params[seq_id])
           for seq_id, p in PROMPTS.items()]
    plan = driver.plan(new)
    for _ in range(num_tokens):
        result = driver.step(plan)
        assert not result.errors, result.errors
        for seq_id, token_id, logprobs in result.sampled.rows():
            out[seq_id].append(token_id)
            assert (logprobs is not None) == (seq_id == 3)
        plan = driver.plan(cached_seqs=[driver.cached_seq(seq_id, 1) for seq_id in PROMPTS])
    return out


def test_sampled_and_logprob_rows_after_a_graph_match_eager_kernels(folder: Path) -> None:
    eager = _run_mixed(_engine(folder, use_kernels=True, enforce_eager=True), 24)
    graphed_engine = _engine(folder, use_kernels=True, enforce_eager=False)
    graphed = _run_mixed(graphed_engine, 24)
    assert graphed == eager
    assert graphed[1] == run_greedy(Driver(_engine(folder, use_kernels=False, enforce_eager=True)), {1: PROMPTS[1]}, 24)[1]
    assert graphed_engine.runner.executor.graphs.num_graphs >= 4


def test_in_graph_argmax_equals_torch_argmax_of_the_graph_logits(folder: Path) -> None:
    engine = _engine(folder, use_kernels=True, enforce_eager=False)
    run_greedy(Driver(engine), PROMPTS, 4)
    graphs = engine.runner.executor.graphs
    logits = graphs.logits_of()
    assert logits.shape[0] == 3 and logits.dtype == torch.float32
    assert graphs.token_ids_of() == logits.argmax(dim=-1).tolist()


def test_prefill_and_mixed_steps_replayed_piecewise_keep_the_reference_tokens(folder: Path) -> None:
    """Chunked prompts beside decoding rows: every non-decode step replays the piecewise graphs."""
    refs = run_greedy(Driver(_engine(folder, use_kernels=False, enforce_eager=True)), PROMPTS, 24, chunk=7)
    engine = _engine(folder, use_kernels=True, enforce_eager=False)
    piecewise = engine.runner.executor.piecewise
    assert piecewise is not None and piecewise.num_graphs == len(piecewise.buckets) * 3  # 2 layers + 1
    assert run_greedy(Driver(engine), PROMPTS, 24, chunk=7) == refs
