"""Fake mode with a step time: a simulated device on which queued steps run back to back, so that the runner takes
its overlapped path as on a GPU (what the pipeline benchmarks measure the stages against)."""

from __future__ import annotations

import time

import pytest

from services.common.errors import InvalidArgument
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from services.worker.executors import FakeExecutor
from services.worker.sampling.types import SamplerOutput
from tests.unit.worker.helpers import Driver

STEP_S = 0.02


def test_steps_queued_on_the_simulated_device_finish_one_step_time_apart() -> None:
    executor = FakeExecutor(7, STEP_S)
    start = time.monotonic()
    first, second = executor.launch([]), executor.launch([])
    assert second.ready_at - first.ready_at == pytest.approx(STEP_S)
    assert first.ready_at - start >= STEP_S
    assert not second.ready()
    assert executor.collect(second) == SamplerOutput([], [])
    assert second.ready() and time.monotonic() >= second.ready_at


def test_with_a_step_time_the_runner_overlaps_steps_and_returns_the_fixed_token() -> None:
    engine = build_engine(WorkerConfig(model="llama-3.2-1b", load_format="fake", fake_token_id=9, fake_step_ms=2.0))
    driver = Driver(engine)
    plans = [driver.plan([driver.new_seq(1, [5, 6, 7], 3)])]
    plans += [driver.plan(cached_seqs=[driver.cached_seq(1, 1)]) for _ in range(3)]
    runner = engine.runner
    results, queued_ahead = [], []
    for plan, nxt in zip(plans, [*plans[1:], None], strict=True):
        results.append(runner.step(plan, next_plan=nxt))
        queued_ahead.append(runner.last_shape.queued_ahead)
    assert [list(zip(r.sampled.seq_ids, r.sampled.token_ids)) for r in results] == [[(1, 9)]] * 4
    assert queued_ahead == [False, True, True, True]  # the first step had no step before it to queue behind
    assert runner.num_overlapped_steps == 3
    assert runner.table.seqs[1].token_ids == [5, 6, 7, 9, 9, 9, 9]


def test_without_a_step_time_fake_mode_runs_every_step_sequentially() -> None:
    executor = FakeExecutor(7)
    assert not executor.can_launch([])
    with pytest.raises(ValueError, match="no device to queue a step on"):
        executor.launch([])


def test_a_negative_fake_step_time_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="fake_step_ms must be non-negative, got -1.0"):
        WorkerConfig(model="llama-3.2-1b", load_format="fake", fake_step_ms=-1.0)



def test_a_step_that_waits_for_the_next_plan_says_how_long_and_one_whose_plan_was_there_says_zero() -> None:
    engine = build_engine(WorkerConfig(model="llama-3.2-1b", load_format="fake", fake_token_id=9, fake_step_ms=20.0))
    driver = Driver(engine)
    first = driver.plan([driver.new_seq(1, [5, 6, 7], 3)])
    second, third = (driver.plan(cached_seqs=[driver.cached_seq(1, 1)]) for _ in range(2))
    arrives_at = time.monotonic() + 0.005

    def late(timeout: float):  # noqa: ANN202 - a PlanSource whose plan arrives 5 ms into the step
        if time.monotonic() < arrives_at:
            time.sleep(timeout)
            return None
        return second

    runner = engine.runner
    runner.step(first, wait_next=late)
    assert 0.004 <= runner.last_shape.next_plan_wait_s < 0.020  # within the step's 20 ms on the simulated device
    runner.step(second, wait_next=lambda _: third)
    assert runner.last_shape.next_plan_wait_s == 0.0
    assert runner.last_shape.queued_ahead
