"""The worker host benchmark drives the real runner through served decode steps and reports every case."""

from __future__ import annotations

from bench.worker_host import compare, marginal, measure


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
