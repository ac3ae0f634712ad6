"""The worker host benchmark drives the real runner through served decode steps and reports every case."""

from __future__ import annotations

from flashstream.v1 import worker_pb2

from bench.worker_host import MIXED_CONTEXT, MODES, compare, marginal, measure, measure_mixed, mixed_plan_bytes


def test_the_host_benchmark_reports_one_case_per_mode_and_row_count_with_per_row_figures() -> None:
    cases = measure([3, 5], ["greedy", "t1"], steps=2, warmup=1, repeats=1)
    assert [(c["mode"], c["rows"], c["steps"]) for c in cases] == [("greedy", 3, 2), ("greedy", 5, 2), ("t1", 3, 2),
                                                                   ("t1", 5, 2)]
    assert all(c["us_per_row"] > 0 and c["best_us_per_row"] <= c["us_per_row"] for c in cases)
    lines = compare(cases[:1], [{**cases[0], "us_per_row": 2 * cases[0]["us_per_row"],
                                 "best_us_per_row": 3 * cases[0]["best_us_per_row"]}], "before")
    assert lines[-1].endswith("| 2.00 | 3.00 |")


def test_the_cost_per_row_is_the_slope_of_step_time_over_rows_beside_a_fixed_cost_per_step() -> None:
    cases = [{"mode": "greedy", "rows": 10, "us_per_row": 3.0, "best_us_per_row": 2.5},
             {"mode": "greedy", "rows": 20, "us_per_row": 2.0, "best_us_per_row": 1.5},
             {"mode": "t1", "rows": 10, "us_per_row": 4.0, "best_us_per_row": 4.0}]
    # median steps 30 and 40 us: 1 us per row beside 20 us per step; fastest 25 and 30 us: 0.5 beside 20
    assert marginal(cases) == {"greedy": (1.0, 20.0, 0.5, 20.0)}


def test_mixed_plans_finish_the_oldest_sequences_continue_the_rest_and_send_new_prompts_whole() -> None:
    plans = [worker_pb2.StepPlan.FromString(b) for b in mixed_plan_bytes(3, 2, 20, 3, MODES["greedy"])]
    first, second, third = plans
    assert [(s.seq_id, len(s.token_ids), s.num_computed_tokens, s.num_scheduled_tokens) for s in first.new_seqs] == [
        (i, MIXED_CONTEXT - i, MIXED_CONTEXT - i - 1, 1) for i in range(5)]
    assert list(second.finished_seq_ids) == [0, 1] and list(second.cached_seqs.seq_ids) == [2, 3, 4]
    assert list(second.cached_seqs.num_scheduled_tokens) == [1, 1, 1]
    assert [(s.seq_id, len(s.token_ids), s.num_computed_tokens, s.num_scheduled_tokens) for s in second.new_seqs] == [
        (5, 20, 0, 20), (6, 20, 0, 20)]
    assert list(third.finished_seq_ids) == [2, 3] and list(third.cached_seqs.seq_ids) == [4, 5, 6]
    assert list(third.cached_seqs.num_new_blocks) == [0, 0, 0] and len(third.new_seqs) == 2
    # Seq 12 of 288 tokens fills 18 blocks: the next plan runs position 288 and gives it a 19th, one that finished
    # seq 0 gave back in the same plan.
    first, second = (worker_pb2.StepPlan.FromString(b) for b in mixed_plan_bytes(12, 1, 20, 2, MODES["greedy"]))
    cached = second.cached_seqs
    assert list(second.finished_seq_ids) == [0] and list(cached.seq_ids) == list(range(1, 13))
    assert list(cached.num_new_blocks) == [0] * 11 + [1] and len(first.new_seqs[12].block_ids) == 18
    assert list(cached.new_block_ids) == [first.new_seqs[0].block_ids[-1]]


def test_the_mixed_host_benchmark_reports_one_case_per_mode_with_the_steps_token_count() -> None:
    cases = measure_mixed(3, 2, 20, ["greedy", "t1"], steps=2, warmup=1, repeats=1)
    assert [(c["mode"], c["decode_rows"], c["prompts"], c["tokens"], c["steps"]) for c in cases] == [
        ("greedy", 3, 2, 43, 2), ("t1", 3, 2, 43, 2)]
    assert all(0 < c["best_ms"] <= c["step_ms"] for c in cases)
    lines = compare(cases[:1], [{**cases[0], "step_ms": 2 * cases[0]["step_ms"], "best_ms": 4 * cases[0]["best_ms"]}],
                    "before", mixed=True)
    assert lines[-1].startswith("| greedy | 3 |") and lines[-1].endswith("| 2.00 | 4.00 |")
