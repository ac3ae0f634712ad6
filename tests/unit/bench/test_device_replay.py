"""The real scheduler replayed over a modelled device: step costs and their fit, steps by kind, the simulated clock,
arrivals, policies, preemptions and prefix hits."""

from __future__ import annotations

import dataclasses

import pytest

from bench.device_replay import COSTS, PROFILED, StepCost, enough_limits, replay
from services.scheduler.config import SchedulerConfig

pytestmark = pytest.mark.timeout(60)

ONE_MS_A_STEP = StepCost(floor_ms=1.0, decode_token_ms=0.0, prompt_token_ms=0.0, context_token_ms=0.0)
# A step holding prompt tokens costs a quarter of a ms per token, at least 1 ms; a decode step 1 ms.
QUARTER_MS_A_PROMPT_TOKEN = StepCost(floor_ms=1.0, decode_token_ms=0.0, prompt_token_ms=0.25, context_token_ms=0.0)


def test_a_step_costs_its_weight_read_floor_until_its_tokens_cost_more() -> None:
    cost = StepCost(floor_ms=4.0, decode_token_ms=0.01, prompt_token_ms=0.02, context_token_ms=0.001,
                    prompt_pair_ms=0.0001, row_ms=0.002, step_ms=0.5)
    assert cost.ms(0, 10, 0) == pytest.approx(4.0 + 0.5 + 0.02)
    assert cost.ms(0, 1000, 0) == pytest.approx(10.0 + 0.5 + 2.0)
    # The prompt rate for the whole step, then each decode key and each prompt (token, key) pair.
    assert cost.ms(500, 100, 1000, 10000) == pytest.approx(12.0 + 1.0 + 1.0 + 0.5 + 1.2)


def test_the_fitted_costs_reproduce_the_profiled_rows_they_come_from() -> None:
    for preset, rows in PROFILED.items():
        cost, by = COSTS[preset], {r.label: r for r in rows}
        large, prefill = by["decode batch 1024"], by["prefill step of 16 x 512 tokens"]
        assert cost.ms(0, large.decode_rows, large.context_tokens) == pytest.approx(large.device_ms)
        assert cost.floor_ms == by["decode batch 64"].gemm_ms
        assert cost.ms(prefill.prompt_tokens, 0, 0, prefill.prompt_pairs) == pytest.approx(
            prefill.gemm_ms + prefill.attention_ms + cost.step_ms + cost.row_ms * prefill.prompt_tokens)
    eight = COSTS["llama-3.1-8b"]
    assert (eight.floor_ms, round(eight.decode_token_ms, 4), round(eight.prompt_token_ms, 4)) == (4.202, 0.0199, 0.0224)
    assert round(eight.context_token_ms * 1e5, 2) == 3.23  # 17.2 ms over 1,024 rows of 520.5 keys


def test_two_requests_at_a_tiny_budget_take_a_prompt_step_two_mixed_steps_and_a_decode_step() -> None:
    # 16 tokens a step: both prompts' first chunks; a decode row beside 15 of the long prompt's tokens; another
    # beside its last 7; then its one decode row. Three plans in flight: the long one's first token comes at 10 ms.
    result = replay([(8, 3), (30, 2)], SchedulerConfig(max_num_batched_tokens=16), None, QUARTER_MS_A_PROMPT_TOKEN)
    assert result.steps == {"prompt": 1, "mixed": 2, "decode": 1}
    assert result.device_s == {"prompt": pytest.approx(0.004), "mixed": pytest.approx(0.006),
                               "decode": pytest.approx(0.001)}
    assert result.duration_s == pytest.approx(0.011)
    assert (result.num_requests, result.output_tokens, result.prompt_tokens, result.decode_rows) == (2, 5, 38, 3)
    assert result.timelines == [(0.0, pytest.approx(0.004), pytest.approx(0.010)),
                                (0.0, pytest.approx(0.010), pytest.approx(0.011))]
    assert (result.ttft_p50_s, result.ttft_p99_s) == (pytest.approx(0.007), pytest.approx(0.00994))
    assert result.device_busy == pytest.approx(1.0)


def test_one_plan_in_flight_waits_for_each_result_before_planning() -> None:
    config = SchedulerConfig(max_num_batched_tokens=16, max_steps_in_flight=1)
    result = replay([(8, 3), (30, 2)], config, None, QUARTER_MS_A_PROMPT_TOKEN)
    assert result.steps == {"prompt": 1, "mixed": 2, "decode": 1}
    assert result.duration_s == pytest.approx(0.011)  # device-bound either way: the same steps, back to back


def test_a_last_prompt_chunk_of_one_token_is_a_prompt_token_not_a_decode_row() -> None:
    result = replay([(17, 1)], SchedulerConfig(max_num_batched_tokens=16), None, ONE_MS_A_STEP)
    assert result.steps == {"prompt": 2, "mixed": 0, "decode": 0}
    assert (result.prompt_tokens, result.decode_rows, result.output_tokens) == (17, 0, 1)


def test_a_closed_loop_of_one_never_runs_two_requests_at_once() -> None:
    result = replay([(16, 2)] * 3, SchedulerConfig(), None, ONE_MS_A_STEP, arrival=1)
    assert result.steps == {"prompt": 3, "mixed": 0, "decode": 3}
    assert result.duration_s == pytest.approx(0.006)
    assert [t[0] for t in result.timelines] == pytest.approx([0.0, 0.002, 0.004])  # each at the last one's finish
    assert [t[2] for t in result.timelines] == pytest.approx([0.002, 0.004, 0.006])


def test_static_batches_run_no_new_prompt_while_a_batch_decodes_and_continuous_ones_do() -> None:
    lengths = [(16, 4), (16, 1), (16, 1)]
    one = dict(max_num_seqs=2, admit_batch=1, max_steps_in_flight=1)
    static = replay(lengths, SchedulerConfig(policy="static", **one), None, ONE_MS_A_STEP)
    continuous = replay(lengths, SchedulerConfig(**one), None, ONE_MS_A_STEP)
    # Static: the third prompt waits for the first request's last token, in a step of its own.
    assert static.steps == {"prompt": 2, "mixed": 0, "decode": 3}
    assert (static.timelines[2][1], static.timelines[0][2]) == (pytest.approx(0.005), pytest.approx(0.004))
    # Continuous: it takes the second one's seat at once, beside the first one's decode row.
    assert continuous.steps == {"prompt": 1, "mixed": 1, "decode": 2}
    assert (continuous.timelines[2][1], continuous.timelines[0][2]) == (pytest.approx(0.002), pytest.approx(0.004))
    assert (static.duration_s, continuous.duration_s) == (pytest.approx(0.005), pytest.approx(0.004))
    assert static.output_tokens == continuous.output_tokens == 6


def test_decode_rows_pay_for_every_key_they_attend_over_and_prompt_rows_for_every_pair() -> None:
    per_key = StepCost(floor_ms=0.0, decode_token_ms=0.0, prompt_token_ms=0.0, context_token_ms=0.5,
                       prompt_pair_ms=0.001)
    result = replay([(32, 3)], SchedulerConfig(), None, per_key)
    assert result.device_s["decode"] == pytest.approx((33 + 34) * 0.5e-3)  # the prompt's keys and each new one
    assert result.device_s["prompt"] == pytest.approx(32 * 33 / 2 * 1e-6)


def test_too_few_kv_blocks_preempt_and_the_recomputed_tokens_run_as_prompt_tokens() -> None:
    lengths = [(16, 32), (16, 32)]  # three blocks of 16 each at the end; five blocks for both
    config = SchedulerConfig(enable_prefix_caching=False, max_steps_in_flight=1)
    roomy = replay(lengths, config, None, ONE_MS_A_STEP)
    tight = replay(lengths, config, dataclasses.replace(enough_limits(lengths, config), num_kv_blocks=5),
                   ONE_MS_A_STEP)
    assert (roomy.preemptions, roomy.prompt_tokens, roomy.duration_s) == (0, 32, pytest.approx(0.032))
    # The newer one gives its blocks up when both need a third, and runs again once the older one ended: its
    # prompt and the 17 tokens it had sampled, as prompt tokens of a step of their own.
    assert (tight.preemptions, tight.prompt_tokens) == (1, 32 + 16 + 17)
    assert tight.steps == {"prompt": 2, "mixed": 0, "decode": 45}
    assert [t[2] for t in tight.timelines] == pytest.approx([0.032, 0.047])
    assert tight.output_tokens == roomy.output_tokens == 64


def test_too_few_kv_blocks_with_three_plans_in_flight_preempt_once_and_readmit_once_the_block_is_free() -> None:
    lengths = [(16, 32), (16, 32)]
    config = SchedulerConfig(enable_prefix_caching=False)  # three plans in flight
    tight = replay(lengths, config, dataclasses.replace(enough_limits(lengths, config), num_kv_blocks=5),
                   ONE_MS_A_STEP)
    # Preempted as with one plan in flight, it had 15 tokens sampled, not 17: the two of the plans in flight were
    # dropped with it. Readmitted into the 2 blocks it gave up, it was preempted 6 times (218 prompt tokens).
    assert (tight.preemptions, tight.prompt_tokens) == (1, 32 + 16 + 15)
    assert tight.steps == {"prompt": 2, "mixed": 0, "decode": 47}
    assert [t[2] for t in tight.timelines] == pytest.approx([0.032, 0.049])
    assert tight.output_tokens == 64


def test_a_shared_prefix_is_found_in_the_prefix_cache_only_when_asked_for() -> None:
    lengths = [(48, 1)] * 2
    assert replay(lengths, SchedulerConfig(), None, ONE_MS_A_STEP, arrival=1).prompt_tokens == 96
    shared = replay(lengths, SchedulerConfig(), None, ONE_MS_A_STEP, arrival=1, shared_prefix=32)
    assert shared.prompt_tokens == 48 + 16  # the second request's two full blocks of prefix are cached
