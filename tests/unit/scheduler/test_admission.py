"""Admission into a full batch: waiting sequences join admit_batch at a time, within admit_wait_ms."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.sampling import SamplingParams
from services.common.step import StepPlan
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine import Engine
from services.scheduler.request_events import Request
from tests.unit.scheduler.fake_worker import FakeWorker, run_engine
from tests.manual_clock import ManualClock

pytestmark = pytest.mark.timeout(30)


def make_engine(admit_batch: int, clock: ManualClock, admit_wait_ms: float = 50.0) -> tuple[Engine, FakeWorker]:
    limits = WorkerLimits(block_size=4, num_kv_blocks=64, max_num_seqs=3, max_num_batched_tokens=64,
                          max_model_len=256, eos_token_ids=(999,))
    config = SchedulerConfig(max_steps_in_flight=1, admit_batch=admit_batch, admit_wait_ms=admit_wait_ms)
    return Engine(config, limits, clock=clock), FakeWorker(64, 4)


def fill(engine: Engine) -> None:
    """a, b and c fill the batch's three seats and end after 2, 3 and 8 tokens; d and e wait."""
    for key, max_tokens in (("a", 2), ("b", 3), ("c", 8), ("d", 4), ("e", 4)):
        engine.add(Request(key, (10 * (ord(key) - 96), 1, 2, 3), SamplingParams(max_tokens=max_tokens)))


def step(engine: Engine, worker: FakeWorker) -> StepPlan:
    plan = engine.build_plan()
    assert plan is not None
    engine.process_result(worker.step(plan))
    return plan


def admitted(plan: StepPlan) -> list[int]:
    """The first prompt token of each sequence the plan admits."""
    return [new.token_ids[0] for new in plan.new_seqs]


def test_a_full_batch_admits_waiting_sequences_once_enough_seats_are_free() -> None:
    engine, worker = make_engine(admit_batch=2, clock=ManualClock())
    fill(engine)
    plans = [step(engine, worker) for _ in range(4)]
    # a ends after step 2: one seat for two waiting, held; b ends after step 3: d and e join together.
    assert [admitted(p) for p in plans] == [[10, 20, 30], [], [], [40, 50]]
    assert [len(p.cached_seqs) for p in plans] == [0, 3, 2, 1]


def test_an_admit_batch_of_one_admits_at_every_free_seat() -> None:
    engine, worker = make_engine(admit_batch=1, clock=ManualClock())
    fill(engine)
    plans = [step(engine, worker) for _ in range(4)]
    assert [admitted(p) for p in plans] == [[10, 20, 30], [], [40], [50]]


def test_seats_held_free_for_admit_wait_ms_take_the_next_waiting_sequence() -> None:
    clock = ManualClock()
    engine, worker = make_engine(admit_batch=2, clock=clock, admit_wait_ms=50.0)
    for key, max_tokens in (("a", 2), ("b", 20), ("c", 20), ("d", 4), ("e", 4)):
        engine.add(Request(key, (10 * (ord(key) - 96), 1, 2, 3), SamplingParams(max_tokens=max_tokens)))
    clock.now = 10.0  # d and e have waited long already: the hold counts from the seat's first held step
    plans = [step(engine, worker) for _ in range(3)]  # a's seat is free from step 3 on
    clock.now = 10.049
    plans.append(step(engine, worker))
    clock.now = 10.050
    plans.append(step(engine, worker))
    assert [admitted(p) for p in plans] == [[10, 20, 30], [], [], [], [40]]


def test_a_step_that_runs_a_prompt_chunk_anyway_admits_at_once() -> None:
    engine, worker = make_engine(admit_batch=8, clock=ManualClock())
    engine.add(Request("a", (10, 1, 2, 3), SamplingParams(max_tokens=2)))
    engine.add(Request("b", (20, 1, 2, 3), SamplingParams(max_tokens=20)))
    engine.add(Request("long", tuple(range(100, 220)), SamplingParams(max_tokens=2)))
    for key in ("w1", "w2"):
        engine.add(Request(key, (40 if key == "w1" else 50, 1, 2, 3), SamplingParams(max_tokens=2)))
    plans = [step(engine, worker) for _ in range(3)]
    # Step 3 runs long's last prompt chunk beside b's decode: a's freed seat is taken at once.
    assert [admitted(p) for p in plans] == [[10, 20, 100], [], [40]]
    assert [p.cached_seqs.num_scheduled_tokens for p in plans] == [[], [1, 1, 62], [1, 2]]


def test_every_request_still_ends_when_the_batch_stays_full() -> None:
    engine, worker = make_engine(admit_batch=3, clock=ManualClock())
    for i in range(12):
        engine.add(Request(f"r{i}", (i + 1, 2, 3), SamplingParams(max_tokens=2 + i % 4)))
    events = run_engine(engine, worker)
    assert sorted(e.key for e in events if type(e).__name__ == "RequestDone") == sorted(f"r{i}" for i in range(12))


@pytest.mark.parametrize(("admit_batch", "admit_wait_ms"), [(0, 50.0), (2, -1.0)])
def test_an_admit_batch_below_one_or_a_negative_wait_is_refused(admit_batch: int, admit_wait_ms: float) -> None:
    with pytest.raises(InvalidArgument) as info:
        SchedulerConfig(admit_batch=admit_batch, admit_wait_ms=admit_wait_ms)
    assert info.value.message == (f"admit_batch must be >= 1 and admit_wait_ms >= 0, got {admit_batch} and "
                                  f"{admit_wait_ms}")
