"""The runner keeps each sequence's state from plan deltas and confines errors to one sequence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.errors import ErrorCode
from services.common.sampling import SamplingParams
from services.common.step import CachedSeqs, NewSeq, StepPlan
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from tests.unit.worker.helpers import Driver, cpu_engine, hf_greedy, make_checkpoint

PROMPT = [5, 17, 99, 3, 250, 41, 7]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def expected(folder: Path) -> list[int]:
    return hf_greedy(folder, PROMPT, 4)[0]


def test_two_plans_in_flight_feed_the_sampled_token_into_the_next_decode(folder: Path, expected: list[int]) -> None:
    driver = Driver(cpu_engine(folder))
    # Both plans are built before either result is read, as a scheduler with two steps in flight does.
    plans = [driver.plan([driver.new_seq(1, PROMPT, len(PROMPT))])]
    plans += [driver.plan(cached_seqs=[driver.cached_seq(1, 1)]) for _ in range(3)]
    results = [driver.step(p) for p in plans]
    assert [r.step_id for r in results] == [1, 2, 3, 4]
    assert [t for r in results for t in r.sampled.token_ids] == expected


def test_unknown_seq_id_fails_alone_while_batch_mates_get_tokens(folder: Path, expected: list[int]) -> None:
    driver = Driver(cpu_engine(folder))
    result = driver.step(driver.plan([driver.new_seq(1, PROMPT, len(PROMPT))], [(77, [], 1)]))
    assert list(zip(result.sampled.seq_ids, result.sampled.token_ids)) == [(1, expected[0])]
    assert [(e.seq_id, e.error.code) for e in result.errors] == [(77, ErrorCode.NOT_FOUND)]
    assert "seq 77: unknown sequence" in result.errors[0].error.message


def test_block_id_out_of_range_fails_only_that_sequence(folder: Path, expected: list[int]) -> None:
    driver = Driver(cpu_engine(folder, num_kv_blocks=8))
    bad = NewSeq(2, PROMPT, len(PROMPT), SamplingParams(), [8], 0, len(PROMPT))
    result = driver.step(driver.plan([bad, driver.new_seq(1, PROMPT, len(PROMPT))]))
    assert list(zip(result.sampled.seq_ids, result.sampled.token_ids)) == [(1, expected[0])]
    assert result.errors[0].seq_id == 2
    assert result.errors[0].error.message == "seq 2: block id 8 is out of range [0, 8)"
    assert 2 not in driver.engine.runner.table.seqs


def test_tokens_beyond_max_model_len_fail_that_sequence(folder: Path) -> None:
    engine = cpu_engine(folder)
    long_prompt = [1] * 257
    result = engine.runner.step(StepPlan(1, [NewSeq(3, long_prompt, 257, SamplingParams(), list(range(17)), 0, 257)]))
    assert len(result.sampled) == 0
    error = result.errors[0].error
    assert (error.code, error.message) == (ErrorCode.INTERNAL, "seq 3: 257 tokens exceed max_model_len 256, which the "
                                                               "tokenizer stage and the scheduler check")


def test_scheduling_past_the_known_tokens_is_an_error(folder: Path) -> None:
    driver = Driver(cpu_engine(folder))
    driver.step(driver.plan([driver.new_seq(1, PROMPT, len(PROMPT))]))
    result = driver.step(driver.plan(cached_seqs=[driver.cached_seq(1, 2)]))
    assert result.errors[0].error.message == "seq 1: 2 tokens scheduled after 7 computed, but only 8 tokens are known"


def test_finished_sequences_are_dropped_before_the_step_runs(folder: Path) -> None:
    driver = Driver(cpu_engine(folder))
    driver.step(driver.plan([driver.new_seq(1, PROMPT, len(PROMPT))]))
    result = driver.step(driver.plan(cached_seqs=[(1, [], 1)], finished=[1]))
    assert len(result.sampled) == 0 and result.errors[0].error.code == ErrorCode.NOT_FOUND
    assert len(driver.engine.runner.table) == 0


def test_middle_prefill_chunk_samples_nothing(folder: Path, expected: list[int]) -> None:
    driver = Driver(cpu_engine(folder))
    first = driver.step(driver.plan([driver.new_seq(1, PROMPT, 4)]))
    second = driver.step(driver.plan(cached_seqs=[driver.cached_seq(1, 3)]))
    assert len(first.sampled) == 0 and first.errors == []
    assert second.sampled.token_ids == [expected[0]]


def test_step_over_max_num_seqs_fails_the_excess_sequences(folder: Path) -> None:
    driver = Driver(cpu_engine(folder, max_num_seqs=2))
    result = driver.step(driver.plan([driver.new_seq(i, PROMPT, len(PROMPT)) for i in (1, 2, 3)]))
    assert result.sampled.seq_ids == [1, 2]
    assert [(e.seq_id, e.error.code) for e in result.errors] == [(3, ErrorCode.RESOURCE_EXHAUSTED)]


def test_logprobs_come_back_for_rows_that_ask(folder: Path, expected: list[int]) -> None:
    engine = cpu_engine(folder)
    new = NewSeq(1, PROMPT, len(PROMPT), SamplingParams(logprobs=2), [0], 0, len(PROMPT))
    out = engine.runner.step(StepPlan(1, [new])).sampled
    assert out.token_ids == [expected[0]]
    logprobs = out.logprobs[0]
    assert logprobs.token_id == expected[0] and logprobs.top[0][0] == expected[0]
    assert len(logprobs.top) == 2


def test_fake_mode_answers_every_sampling_sequence_with_the_fixed_token(folder: Path) -> None:
    engine = build_engine(WorkerConfig(model=str(folder), load_format="fake", fake_token_id=42, max_model_len=256))
    assert engine.model is None and engine.info.model.vocab_size == 256
    plan = StepPlan(1, [NewSeq(1, PROMPT, 7, SamplingParams(), [0], 0, 7), NewSeq(2, PROMPT, 7, SamplingParams(), [1], 0, 3)])
    result = engine.runner.step(plan)
    assert list(zip(result.sampled.seq_ids, result.sampled.token_ids)) == [(1, 42)]
    result = engine.runner.step(StepPlan(2, cached_seqs=CachedSeqs.of([(1, [], 1), (2, [], 4)])))
    assert list(zip(result.sampled.seq_ids, result.sampled.token_ids)) == [(1, 42), (2, 42)]


def test_fake_mode_refuses_an_eos_token(folder: Path) -> None:
    from services.common.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="fake_token_id 2 must be a non-EOS id"):
        build_engine(WorkerConfig(model=str(folder), load_format="fake", fake_token_id=2))


def test_a_mixed_step_runs_its_one_token_rows_first_so_they_take_the_decode_kernel(folder: Path) -> None:
    from services.worker.attention_metadata import step_metadata
    from services.worker.step_inputs import StepInputs

    engine = cpu_engine(folder)
    driver = Driver(engine)
    driver.step(driver.plan([driver.new_seq(1, PROMPT, len(PROMPT)), driver.new_seq(2, PROMPT[:3], 3)]))
    driver.step(driver.plan([driver.new_seq(3, PROMPT, 4)], [driver.cached_seq(1, 1), driver.cached_seq(2, 1)]))
    # The plan lists the new prompt chunk first; the table runs the one-token rows ahead of it.
    plan = driver.plan([driver.new_seq(4, PROMPT, len(PROMPT))],
                       [driver.cached_seq(3, 3), driver.cached_seq(1, 1), driver.cached_seq(2, 1)])
    scheduled, errors = engine.runner.table.apply(plan)
    assert errors == [] and [(s.state.seq_id, s.num_tokens) for s in scheduled] == [(1, 1), (2, 1), (4, 7), (3, 3)]
    inputs = StepInputs.of(scheduled)
    meta, _ = step_metadata(inputs.starts, inputs.num_tokens, inputs.block_tables, 16, torch.device("cpu"))
    assert meta.num_decode_seqs == 2 and meta.prefill_query_start_loc.tolist() == [0, 7, 10]
