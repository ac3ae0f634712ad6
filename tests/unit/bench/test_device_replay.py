"""The real scheduler replayed over a modelled device: step costs, steps by kind, the simulated clock."""

from __future__ import annotations

import pytest

from bench.device_replay import StepCost, replay
from services.scheduler.config import SchedulerConfig

pytestmark = pytest.mark.timeout(60)

ONE_MS_A_STEP = StepCost(floor_ms=1.0, decode_token_ms=0.0, prompt_token_ms=0.0, context_token_ms=0.0, row_ms=0.0)


def test_a_step_costs_its_weight_read_floor_until_its_tokens_cost_more() -> None:
    cost = StepCost(floor_ms=4.0, decode_token_ms=0.01, prompt_token_ms=0.02, context_token_ms=0.001, row_ms=0.0)
    assert cost.ms(0, 10, 0) == 4.0
    assert cost.ms(0, 1000, 0) == 10.0
    assert cost.ms(500, 100, 1000) == pytest.approx(12.0 + 1.0)  # the prompt rate for the whole step, then keys


def test_two_requests_take_one_prompt_step_then_decode_steps_until_the_longer_ends() -> None:
    result = replay([(32, 3), (16, 2)], SchedulerConfig(max_num_batched_tokens=64), ONE_MS_A_STEP)
    assert result.steps == {"prompt": 1, "mixed": 0, "decode": 2}
    assert result.duration_s == pytest.approx(0.003)
    assert (result.num_requests, result.output_tokens, result.prompt_tokens, result.decode_rows) == (2, 5, 48, 3)
    assert (result.ttft_p50_s, result.ttft_p99_s) == (pytest.approx(0.001), pytest.approx(0.001))


def test_a_closed_loop_of_one_never_runs_two_requests_in_one_step() -> None:
    result = replay([(16, 2)] * 3, SchedulerConfig(), ONE_MS_A_STEP, concurrency=1)
    assert result.steps == {"prompt": 3, "mixed": 0, "decode": 3}
    assert result.duration_s == pytest.approx(0.006)


def test_static_batches_run_no_prompt_beside_decode_rows_and_continuous_ones_do() -> None:
    lengths = [(16, 4), (16, 2), (16, 3), (16, 1)]
    static = replay(lengths, SchedulerConfig(max_num_seqs=2, policy="static", admit_batch=1), ONE_MS_A_STEP)
    continuous = replay(lengths, SchedulerConfig(max_num_seqs=2, admit_batch=1), ONE_MS_A_STEP)
    assert static.steps == {"prompt": 2, "mixed": 0, "decode": 5}
    assert continuous.steps == {"prompt": 2, "mixed": 1, "decode": 4}
    assert static.output_tokens == continuous.output_tokens == 10


def test_decode_rows_pay_for_every_key_they_attend_over() -> None:
    per_key = StepCost(floor_ms=0.0, decode_token_ms=0.0, prompt_token_ms=0.0, context_token_ms=0.5, row_ms=0.0)
    result = replay([(32, 3)], SchedulerConfig(), per_key)
    assert result.device_s["decode"] == pytest.approx((33 + 34) * 0.5e-3)  # the prompt's keys and each new one
