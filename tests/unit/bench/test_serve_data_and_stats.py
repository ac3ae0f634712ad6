"""The serving benchmark's request sets (seeded, exact prompt lengths), model folders and statistics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from bench.serve import arrivals
from bench.serve_client import Record
from bench.serve_data import PromptMaker, make_model, request_set, sharegpt_lengths
from bench.serve_report import (Sampler, cpu_table, idle_table, interval_busy, process_cpu_s, saturated_window,
                                scenario_stats, stage_metrics, step_table, summary)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model("llama-3.2-1b", tmp_path_factory.mktemp("m") / "llama")


def test_the_model_folder_tokenizer_covers_every_id_and_sits_bos_eos_at_the_presets_ids(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert tok.get_vocab_size() == 128256
    assert tok.token_to_id("<|begin_of_text|>") == 128000
    assert tok.token_to_id("<|end_of_text|>") == 128001
    assert tok.decode([128255], skip_special_tokens=False) == "<|extra_128255|>"


def test_the_request_set_is_the_same_for_one_seed_and_differs_for_another(model_dir: Path) -> None:
    a = request_set(model_dir, 6, 3, "sharegpt")
    assert a == request_set(model_dir, 6, 3, "sharegpt")
    assert a != request_set(model_dir, 6, 4, "sharegpt")


def test_every_prompt_encodes_to_exactly_its_input_length(model_dir: Path) -> None:
    maker = PromptMaker(model_dir, 0)
    for spec in request_set(model_dir, 12, 1, "sharegpt") + request_set(model_dir, 3, 1, "fixed", 1024, 7):
        assert maker.token_count(spec.prompt) == spec.input_len


def test_sharegpt_lengths_have_the_documented_mean_and_spread() -> None:
    lengths = np.array(sharegpt_lengths(20000, 0))
    assert lengths.min() >= 4 and lengths[:, 0].max() <= 1024
    assert abs(lengths[:, 0].mean() - 297) < 8 and abs(lengths[:, 1].mean() - 276) < 8
    assert abs(lengths[:, 0].std() - 167) < 15 and abs(lengths[:, 1].std() - 134) < 15


def test_poisson_arrivals_start_at_zero_and_average_the_rate() -> None:
    times = arrivals(5000, 50.0, 0)
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:]))
    assert abs(len(times) / times[-1] - 50.0) < 2.5
    assert arrivals(3, float("inf"), 0) == [0.0, 0.0, 0.0]


def test_summary_gives_mean_and_interpolated_percentiles() -> None:
    assert summary([float(v) for v in range(1, 101)]) == pytest.approx(
        {"mean": 50.5, "p50": 50.5, "p90": 90.1, "p99": 99.01}, abs=1e-9)
    assert summary([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_scenario_stats_of_known_records() -> None:
    ok = Record(4, 3, start=10.0, chunk_times=[10.5, 10.6, 10.8], completion_tokens=3, prompt_tokens=4)
    slow = Record(4, 3, start=10.0, chunk_times=[12.0, 12.1, 12.2], completion_tokens=3, prompt_tokens=4)
    failed = Record(4, 3, start=10.0, error="HTTP 500")
    s = scenario_stats([ok, slow, failed], 10.0, 12.0, slo_ttft_s=1.0, slo_tpot_s=0.5)
    assert (s["num_requests"], s["completed"], s["failed"]) == (3, 2, 1)
    assert s["total_output_tokens"] == 6 and s["total_input_tokens"] == 8
    assert s["ttft_s"]["mean"] == pytest.approx(1.25)
    assert s["tpot_s"]["p50"] == pytest.approx(0.125)
    assert s["itl_s"]["p50"] == pytest.approx(0.1)
    assert s["good_requests"] == 1
    assert s["output_throughput"] == pytest.approx(3.0)


def test_stage_metrics_report_the_workers_step_time_by_kind_steps_queued_ahead_and_plan_waits_during_the_run() -> None:
    before = {"worker0": {"flashstream_step_duration_seconds_sum{decode}": 1.0,
                          "flashstream_step_duration_seconds_count{decode}": 10.0}}
    after = {"worker0": {"flashstream_step_duration_seconds_sum{decode}": 3.0,
                         "flashstream_step_duration_seconds_count{decode}": 110.0,
                         "flashstream_step_duration_seconds_sum{mixed}": 0.5,
                         "flashstream_step_duration_seconds_count{mixed}": 5.0,
                         "flashstream_step_tokens_sum{prefill}": 640.0, "flashstream_step_tokens_sum{decode}": 300.0,
                         "flashstream_device_idle_seconds_total": 0.25,
                         "flashstream_steps_queued_ahead_total": 84.0,
                         "flashstream_next_plan_wait_seconds_total": 0.5}}
    stages = stage_metrics(before, after, {})
    assert stages["worker0"]["steps"] == {"decode": {"steps": 100, "seconds": 2.0}, "mixed": {"steps": 5, "seconds": 0.5}}
    table = step_table([{"name": "s", "stages": stages}])
    assert (stages["worker0"]["prefill_tokens"], stages["worker0"]["decode_tokens"]) == (640, 300)
    assert "| s | worker0 | - | 5 / 0.50 / 100.00 | 100 / 2.00 / 20.00 | 640 | 300 | 0.25 | 84 (80%) | 0.50 |" in table


def test_each_stage_process_reports_its_cpu_time_during_the_run_and_per_output_token() -> None:
    table = cpu_table([{"name": "s", "cpu_s": {"scheduler": 3.0, "gateway": 1.5},
                        "result": {"duration_s": 2.0, "total_output_tokens": 30000}}])
    assert "| scenario | gateway | scheduler |" in table
    assert "| s | 1.50 / 0.75 / 50.0 | 3.00 / 1.50 / 100.0 |" in table


def test_process_cpu_time_is_read_for_live_processes_and_left_out_for_gone_ones() -> None:
    busy_until = time.process_time() + 0.05
    while time.process_time() < busy_until:
        pass
    got = process_cpu_s({"me": os.getpid(), "gone": 2 ** 22 + 1})
    assert set(got) == {"me"}
    assert got["me"] >= 0.05


def test_gpu_busy_averages_only_the_samples_taken_during_the_load() -> None:
    sampler = Sampler({})
    sampler.gpu = [(10.0, 0.0), (11.0, 0.5), (12.0, 1.0), (13.0, 0.75), (14.0, 0.0)]  # client start-up, load, after
    assert sampler.gpu_busy(11.0, 13.0) == 0.75
    assert sampler.gpu_busy(20.0, 30.0) is None


def test_busy_over_a_window_weighs_each_driver_period_by_how_much_of_it_falls_inside() -> None:
    # Periods of 0.5 s ending at 10.5 (idle), 11.0 (half busy), 11.5 and 12.0 (busy).
    periods = [(10.5, 0.0), (11.0, 0.5), (11.5, 1.0), (12.0, 1.0)]
    assert interval_busy(periods, 10.75, 11.5) == (0.25 * 0.5 + 0.5 * 1.0) / 0.75  # half of (10.5, 11]
    assert interval_busy(periods, 10.0, 12.0) == 0.625  # the first period taken as 0.5 s long, like the others
    assert interval_busy(periods, 13.0, 14.0) is None
    assert interval_busy(periods[:1], 10.0, 11.0) is None
    sampler = Sampler({})
    sampler.gpu = [(11.0, 0.0), (11.4, 0.0)]  # read late: the polled mean puts the busy time after the window
    sampler.gpu_periods = periods
    assert (sampler.gpu_busy(11.0, 12.0), sampler.gpu_busy_polled(11.0, 12.0)) == (1.0, 0.0)
    sampler.gpu_periods = []  # a driver that keeps no samples: the reads
    assert sampler.gpu_busy(11.0, 12.0) == 0.0


def test_each_tenth_of_a_run_reports_gpu_busy_idle_steps_prompt_steps_and_running_sequences() -> None:
    sampler = Sampler({})
    # Metrics scraped each second for ten seconds: one decode step a second, and a mixed step in the first second.
    for i in range(11):
        worker = {"flashstream_step_duration_seconds_count{decode}": float(i),
                  "flashstream_step_duration_seconds_count{mixed}": float(min(i, 1)),
                  "flashstream_device_idle_seconds_total": 0.1 * i}
        sampler.timeline.append((100.0 + i, {"worker0": worker, "scheduler": {"flashstream_num_requests_running": 10 - i}}))
    sampler.gpu = [(100.0 + i / 2, 0.5 if i < 2 else 1.0) for i in range(20)]
    tenths = sampler.idle_by_tenth(100.0, 110.0)
    assert tenths["gpu_busy"] == [0.5] + [1.0] * 9
    assert tenths["prompt_steps"] == [1] + [0] * 9
    assert tenths["steps"] == [2] + [1] * 9
    assert tenths["running"] == list(range(9, -1, -1))
    table = idle_table([{"name": "s", "idle_by_tenth": tenths}])
    assert "| s | 1.00 | 50% / 0.10 / 2 (1) / 9 | 100% / 0.10 / 1 (0) / 8 |" in table
    sampler.clocks = [(100.0 + i / 2, 1980.0 if i < 2 else 1600.0, 700.0) for i in range(20)]
    tenths = sampler.idle_by_tenth(100.0, 110.0)
    assert tenths["sm_mhz"] == [1980] + [1600] * 9
    table = idle_table([{"name": "s", "idle_by_tenth": tenths}])
    assert "| s | 1.00 | 50% @ 1980 / 0.10 / 2 (1) / 9 | 100% @ 1600 / 0.10 / 1 (0) / 8 |" in table


def test_clock_and_power_average_only_the_samples_taken_in_the_window() -> None:
    sampler = Sampler({})
    sampler.clocks = [(10.0, 1980.0, 120.0), (11.0, 1700.0, 690.0), (12.0, 1500.0, 700.0), (14.0, 1980.0, 100.0)]
    assert sampler.clock_power(11.0, 12.0) == {"sm_mhz": 1600, "power_w": 695}
    assert sampler.clock_power(20.0, 30.0) is None


def test_saturated_window_spans_the_time_at_least_half_the_requests_were_in_flight() -> None:
    # Four requests sent at 0; they finish at 1, 2, 5 and 9: two or more are in flight until the third finishes.
    records = [Record(8, 2, start=0.0, chunk_times=[0.5, end]) for end in (1.0, 2.0, 5.0, 9.0)]
    assert saturated_window(records, 4) == (0.0, 5.0)
    # Closed loop of concurrency 2: at least one request is in flight from the first send to the last chunk.
    staggered = [Record(8, 2, start=0.0, chunk_times=[3.0]), Record(8, 2, start=1.0, chunk_times=[4.0]),
                 Record(8, 2, start=3.0, chunk_times=[6.0])]
    assert saturated_window(staggered, 2) == (0.0, 6.0)
    assert saturated_window([], 4) is None
