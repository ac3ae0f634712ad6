"""On a CUDA GPU: steps queued behind the previous one (input tokens it samples copied on the device) give the
tokens of the sequential path, with CUDA graphs and without, sampled rows too, and with two streams interleaved."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.sampling import SamplingParams
from services.common.step import StepPlan
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from tests.unit.worker.helpers import Driver, make_checkpoint
from tests.unit.worker.test_runner_overlap import (PROMPTS, _plans, _run, _sampled_plans, _summary,
                                                    _summary_with_logprobs)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["llama3_rope", "qwen3"])
def folder(request, tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def _engine(folder: Path, enforce_eager: bool, dtype: str = "float32"):  # noqa: ANN202
    config = WorkerConfig(model=str(folder), device="cuda", dtype=dtype, num_kv_blocks=64, max_model_len=256,
                          max_num_seqs=8, max_num_batched_tokens=512, enforce_eager=enforce_eager)
    return build_engine(config, use_kernels=True)


@pytest.mark.parametrize("enforce_eager", [False, True])
def test_overlapped_greedy_tokens_equal_sequential_ones_on_the_gpu(folder: Path, enforce_eager: bool) -> None:
    sequential_engine, overlapped_engine = _engine(folder, enforce_eager), _engine(folder, enforce_eager)
    sequential = _run(sequential_engine, _plans(sequential_engine, 64), "sequential")
    overlapped = _run(overlapped_engine, _plans(overlapped_engine, 64), "next_plan")
    assert _summary(overlapped) == _summary(sequential)
    assert overlapped_engine.runner.num_overlapped_steps == 17
    assert (overlapped_engine.runner.executor.graphs is None) == enforce_eager


def test_overlapped_bf16_graph_tokens_equal_sequential_ones(folder: Path) -> None:
    sequential_engine, overlapped_engine = _engine(folder, False, "bfloat16"), _engine(folder, False, "bfloat16")
    sequential = _run(sequential_engine, _plans(sequential_engine, 64), "sequential")
    overlapped = _run(overlapped_engine, _plans(overlapped_engine, 64), "wait_next")
    assert _summary(overlapped) == _summary(sequential)


STREAM_PROMPTS = {0: (1, 3), 32: (2, 1)}  # first block of the stream → prompts of its seqs 1 and 2


def _stream_plans(engine, first_block: int, num_steps: int) -> list[StepPlan]:  # noqa: ANN001
    d = Driver(engine, next_block=first_block)
    seq_ids = (1, 2)
    plans = [d.plan([d.new_seq(s, PROMPTS[k], len(PROMPTS[k])) for s, k in zip(seq_ids, STREAM_PROMPTS[first_block])])]
    plans += [d.plan(cached_seqs=[d.cached_seq(s, 1) for s in seq_ids]) for _ in range(num_steps)]
    return plans


def test_two_streams_interleaving_launched_steps_keep_their_own_tokens(folder: Path) -> None:
    """Each stream's launched step reads its own previous argmax, although the other stream's graph replays
    (which rewrite the graphs' argmax buffer) run between them."""
    reference = _engine(folder, False)
    expected = {}
    for first_block in (0, 32):
        table = reference.runner.new_table()
        results = [reference.runner.step(p, table) for p in _stream_plans(reference, first_block, 12)]
        expected[first_block] = _summary(results)
    engine = _engine(folder, False)
    plans = {fb: _stream_plans(engine, fb, 12) for fb in (0, 32)}
    tables = {fb: engine.runner.new_table() for fb in (0, 32)}
    got: dict[int, list] = {0: [], 32: []}
    for k in range(13):
        for fb in (0, 32):
            nxt = plans[fb][k + 1] if k + 1 < 13 else None
            got[fb].append(engine.runner.step(plans[fb][k], tables[fb], next_plan=nxt))
    assert {fb: _summary(r) for fb, r in got.items()} == expected
    assert expected[0] != expected[32]
    assert engine.runner.num_overlapped_steps == 2 * 12


@pytest.mark.parametrize("enforce_eager", [False, True])
def test_overlapped_sampled_rows_equal_sequential_ones_on_the_gpu(folder: Path, enforce_eager: bool) -> None:
    params = {
        1: SamplingParams(max_tokens=32, temperature=0.9, top_p=0.95, seed=11, logprobs=2, ignore_eos=True),
        2: SamplingParams(max_tokens=32, temperature=1.0, top_k=20, seed=5, min_tokens=4, ignore_eos=True),
        3: SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True),
    }
    sequential_engine, overlapped_engine = _engine(folder, enforce_eager), _engine(folder, enforce_eager)
    sequential = _run(sequential_engine, _sampled_plans(sequential_engine, params), "sequential")
    overlapped = _run(overlapped_engine, _sampled_plans(overlapped_engine, params), "wait_next")
    assert _summary_with_logprobs(overlapped) == _summary_with_logprobs(sequential)
    assert overlapped_engine.runner.num_overlapped_steps == 11
