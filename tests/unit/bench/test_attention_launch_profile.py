"""The attention launch benchmark's profile counts each function per attention call and lists the busiest first."""

from __future__ import annotations

import time

import pytest

from bench.attention_launch import profile_calls

pytestmark = pytest.mark.timeout(60)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _launch_like(checked: bool) -> None:
    _spin(0.002 if checked else 0.004)


def test_profile_reports_each_function_per_call_with_the_calls_own_time_first() -> None:
    calls = [_launch_like, _launch_like, _launch_like]  # three layers; the first unchecked, as in the worker's mode
    rows = profile_calls(calls, rounds=4, top=50)
    by_name = {row["function"].split("(")[-1].rstrip(")"): row for row in rows}
    assert by_name["_launch_like"]["calls_per_call"] == 1.0
    assert by_name["_spin"]["calls_per_call"] == 1.0
    # (4 + 2 + 2) ms over three calls: the spin's cumulative time per call, within the timer's and profiler's slack.
    assert 2_600 < by_name["_spin"]["cumulative_us"] < 4_000
    owns = [row["own_us"] for row in rows]
    assert owns == sorted(owns, reverse=True)
    assert len(rows) <= 50
