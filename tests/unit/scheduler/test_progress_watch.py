"""ProgressWatch: when the oldest step in flight is overdue, with exact allowances on a fake clock."""

from __future__ import annotations

from services.common.sampling import SamplingParams
from services.common.step import CachedSeqs, NewSeq, StepPlan
from services.scheduler.config import StallConfig
from services.scheduler.progress_watch import ProgressWatch
from tests.manual_clock import ManualClock


def _decode_plan(step_id: int) -> StepPlan:
    return StepPlan(step_id, [], CachedSeqs.of([(0, [], 1)]), [])


def _prefill_plan(step_id: int, num_tokens: int) -> StepPlan:
    return StepPlan(step_id, [NewSeq(1, [1] * num_tokens, num_tokens, SamplingParams(), [0], 0, num_tokens)])


CONFIG = StallConfig(timeout_s=3.0, per_prefill_token_s=0.001, first_steps=2, first_steps_timeout_s=60.0)


def test_the_first_steps_get_the_compile_allowance_and_later_ones_the_timeout():
    clock = ManualClock(100.0)
    watch = ProgressWatch(CONFIG, clock)
    watch.sent(_decode_plan(0))
    clock.now += 59.0
    assert watch.stalled_for() is None
    clock.now += 2.0
    assert watch.stalled_for() == 1.0
    watch.returned()
    watch.sent(_decode_plan(1))  # second step: still a first step
    watch.returned()
    watch.sent(_decode_plan(2))
    clock.now += 3.5
    assert watch.stalled_for() == 0.5


def test_a_worker_past_its_first_steps_on_an_earlier_connection_gets_no_compile_allowance():
    clock = ManualClock(100.0)
    first = ProgressWatch(CONFIG, clock)
    assert not first.past_first_steps
    for step_id in range(2):
        first.sent(_decode_plan(step_id))
        first.returned()
    assert first.past_first_steps
    again = ProgressWatch(CONFIG, clock, warm=True)
    assert again.past_first_steps
    again.sent(_decode_plan(0))
    clock.now += 3.5
    assert again.stalled_for() == 0.5


def test_a_step_behind_another_starts_its_clock_when_the_one_ahead_returns():
    clock = ManualClock(100.0)
    watch = ProgressWatch(StallConfig(timeout_s=3.0, first_steps=0), clock)
    watch.sent(_decode_plan(0))
    watch.sent(_decode_plan(1))
    clock.now += 2.0
    watch.returned()  # step 1 starts running now
    clock.now += 2.5
    assert watch.stalled_for() is None
    clock.now += 1.0
    assert watch.stalled_for() == 0.5
    watch.returned()
    clock.now += 100.0
    assert watch.stalled_for() is None  # nothing in flight: an idle worker is not stalled


def test_a_large_prefill_gets_time_for_its_prompt_tokens():
    clock = ManualClock(100.0)
    watch = ProgressWatch(StallConfig(timeout_s=3.0, per_prefill_token_s=0.001, first_steps=0), clock)
    watch.sent(_prefill_plan(0, 8000))
    clock.now += 10.5
    assert watch.stalled_for() is None
    clock.now += 1.0
    assert watch.stalled_for() == 0.5
