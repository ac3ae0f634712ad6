"""Batching policy through the Engine and the fake worker: exact step contents."""

from __future__ import annotations

import pytest

from services.common.errors import ErrorCode, InvalidArgument
from services.common.finish_reason import FinishReason
from services.common.metrics import Metrics
from services.common.sampling import SamplingParams
from services.common.step import SampledTokens, SeqError, StepPlan
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine import Engine
from services.scheduler.request_events import NewTokens, Request, RequestDone, RequestFailed
from tests.unit.scheduler.fake_worker import FakeWorker, run_engine


def make_engine(
    num_blocks: int = 32, budget: int = 64, max_num_seqs: int = 16, policy: str = "continuous",
    metrics: Metrics | None = None, max_model_len: int = 256, in_flight: int = 2,
) -> tuple[Engine, FakeWorker]:
    limits = WorkerLimits(block_size=4, num_kv_blocks=num_blocks, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=budget, max_model_len=max_model_len, eos_token_ids=(999,))
    engine = Engine(SchedulerConfig(policy=policy, max_steps_in_flight=in_flight), limits, metrics, clock=lambda: 0.0)
    return engine, FakeWorker(num_blocks, 4)


def request(key: str, prompt: list[int], max_tokens: int = 4, priority: int = 0) -> Request:
    return Request(key, tuple(prompt), SamplingParams(max_tokens=max_tokens), priority)


def step_sync(engine: Engine, worker: FakeWorker) -> StepPlan:
    """One step with nothing else in flight: plan, run, apply the result."""
    plan = engine.build_plan()
    assert plan is not None
    engine.process_result(worker.step(plan))
    return plan


def shape(plan: StepPlan) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]], list[int]]:
    """(new: (seq_id, num_computed, num_scheduled)), (cached: (seq_id, num_scheduled)), finished ids."""
    return (
        [(n.seq_id, n.num_computed_tokens, n.num_scheduled_tokens) for n in plan.new_seqs],
        list(zip(plan.cached_seqs.seq_ids, plan.cached_seqs.num_scheduled_tokens)),
        plan.finished_seq_ids,
    )


def tokens_of(events: list, key: str) -> list[int]:
    return [token_id for e in events if isinstance(e, NewTokens) for k, token_id, _ in e.rows() if k == key]


def done_of(events: list, key: str) -> RequestDone:
    (done,) = [e for e in events if isinstance(e, RequestDone) and e.key == key]
    return done


def test_running_decodes_go_first_and_a_long_prompt_is_chunked_around_them():
    engine, worker = make_engine(budget=8)
    engine.add(request("a", [1, 2, 3], max_tokens=10))
    assert shape(step_sync(engine, worker)) == ([(0, 0, 3)], [], [])
    engine.add(request("b", list(range(100, 120))))
    assert shape(step_sync(engine, worker)) == ([(1, 0, 7)], [(0, 1)], [])
    assert shape(step_sync(engine, worker)) == ([], [(0, 1), (1, 7)], [])
    assert shape(step_sync(engine, worker)) == ([], [(0, 1), (1, 6)], [])  # b's last chunk samples
    assert shape(step_sync(engine, worker)) == ([], [(0, 1), (1, 1)], [])
    events = engine.take_events()
    assert tokens_of(events, "a") == [4, 5, 6, 7, 8]
    assert tokens_of(events, "b") == [120, 121]


def test_waiting_requests_start_by_priority_then_arrival():
    engine, worker = make_engine(max_num_seqs=1)
    engine.add(request("late", [10], max_tokens=1, priority=5))
    engine.add(request("first", [20], max_tokens=1, priority=0))
    engine.add(request("second", [30], max_tokens=1, priority=0))
    run_engine(engine, worker)
    started = [n.token_ids[0] for plan in worker.steps for n in plan.new_seqs]
    assert started == [20, 30, 10]


def test_out_of_blocks_preempts_the_newest_running_sequence_which_is_recomputed_later():
    metrics = Metrics("scheduler")
    engine, worker = make_engine(num_blocks=4, metrics=metrics)
    engine.add(request("a", [1, 2, 3, 4], max_tokens=8))
    engine.add(request("b", [100, 101, 102, 103], max_tokens=8))
    plans = [step_sync(engine, worker) for _ in range(6)]
    assert [shape(p) for p in plans[:5]] == [([(0, 0, 4), (1, 0, 4)], [], [])] + [([], [(0, 1), (1, 1)], [])] * 4
    # Step 5: a needs a third block, none is free: b (newest) is preempted and its blocks freed.
    assert shape(plans[5]) == ([], [(0, 1)], [1])
    assert metrics.num_preemptions._value.get() == 1
    events = run_engine(engine, worker)
    resent = [n for p in worker.steps[6:] for n in p.new_seqs]
    assert len(resent) == 1
    # Sent again with its prompt and the 5 tokens it had generated; its prompt block was still cached.
    assert resent[0].token_ids == [100, 101, 102, 103, 104, 105, 106, 107, 108]
    assert (resent[0].num_computed_tokens, resent[0].num_scheduled_tokens) == (4, 5)
    assert tokens_of(events, "b") == [104, 105, 106, 107, 108, 109, 110, 111]  # as if never preempted
    assert done_of(events, "b").num_completion_tokens == 8
    assert done_of(events, "a").finish_reason is FinishReason.LENGTH
    assert engine.block_manager.num_free_blocks == 4


@pytest.mark.parametrize("in_flight", [1, 2, 3, 4])
def test_a_request_preempted_for_a_block_is_readmitted_only_once_that_block_is_free(in_flight: int):
    # Two requests of 16 tokens in / 32 out need 3 blocks of 16 each at the end; 5 exist. Before admission asked
    # for free blocks for the tokens of the plans in flight, the newer one was readmitted into the 2 blocks it
    # gave up and preempted again a few plans later: 8, 6 and 5 times with 2, 3 and 4 plans in flight.
    limits = WorkerLimits(block_size=16, num_kv_blocks=5, max_num_seqs=16, max_num_batched_tokens=64,
                          max_model_len=256, eos_token_ids=(999,))
    config = SchedulerConfig(max_steps_in_flight=in_flight, enable_prefix_caching=False)
    engine, worker = Engine(config, limits, clock=lambda: 0.0), FakeWorker(5, 16)
    a = engine.add(request("a", list(range(1, 17)), max_tokens=32))
    b = engine.add(request("b", list(range(100, 116)), max_tokens=32))
    events = run_engine(engine, worker)
    assert (a.num_preemptions, b.num_preemptions) == (0, 1)
    # b runs again once a ended: its prompt and the 17 tokens it had sampled, less those of the plans in flight
    # when it was preempted (dropped with its seq id, sampled again).
    resent = [n for p in worker.steps for n in p.new_seqs][2:]
    assert [(n.num_computed_tokens, n.num_scheduled_tokens) for n in resent] == [(0, 16 + 17 - (in_flight - 1))]
    assert tokens_of(events, "a") == list(range(17, 49))
    assert tokens_of(events, "b") == list(range(116, 148))
    assert done_of(events, "b").num_completion_tokens == 32
    assert engine.block_manager.num_free_blocks == 5


def test_admission_asks_no_block_for_tokens_past_the_last_one_a_request_computes():
    # One block of 4: a prompt of 4 tokens and one output token never computes a fifth, so the lookahead of the
    # plans in flight asks nothing more and it is admitted.
    limits = WorkerLimits(block_size=4, num_kv_blocks=1, max_num_seqs=16, max_num_batched_tokens=64,
                          max_model_len=256, eos_token_ids=(999,))
    engine, worker = Engine(SchedulerConfig(max_steps_in_flight=3), limits, clock=lambda: 0.0), FakeWorker(1, 4)
    engine.add(request("r", [1, 2, 3, 4], max_tokens=1))
    events = run_engine(engine, worker)
    assert tokens_of(events, "r") == [5]
    assert done_of(events, "r").finish_reason is FinishReason.LENGTH


def test_static_policy_starts_the_next_batch_only_when_the_whole_batch_finished():
    def first_step_of_c(policy: str, in_flight: int = 2) -> int:
        engine, worker = make_engine(max_num_seqs=2, policy=policy, in_flight=in_flight)
        engine.add(request("a", [1], max_tokens=2))
        engine.add(request("b", [10], max_tokens=6))
        engine.add(request("c", [20], max_tokens=2))
        events = run_engine(engine, worker)
        assert tokens_of(events, "c") == [21, 22]
        return next(i for i, p in enumerate(worker.steps) for n in p.new_seqs if n.token_ids == [20])

    # Steps 0 and 1 are planned together; a's end is known with step 1's result, so c joins in step 3 (in step 4
    # when steps 0 to 2 were planned together).
    assert first_step_of_c("continuous") == 3
    assert first_step_of_c("continuous", in_flight=3) == 4
    assert first_step_of_c("static") == 6  # waits for b's sixth token


def test_next_step_is_planned_before_the_previous_result_with_a_block_for_the_speculative_token():
    engine, worker = make_engine()
    engine.add(request("a", [1, 2, 3, 4], max_tokens=3))
    first = engine.build_plan()
    second = engine.build_plan()
    assert engine.build_plan() is None  # two in flight
    assert shape(first) == ([(0, 0, 4)], [], [])
    assert list(second.cached_seqs.rows()) == [(0, [1], 1)]
    engine.process_result(worker.step(first))
    engine.process_result(worker.step(second))
    assert tokens_of(engine.take_events(), "a") == [5, 6]


def test_a_token_that_finishes_a_sequence_drops_the_token_of_its_in_flight_successor():
    engine, worker = make_engine()
    worker.eos_after = frozenset({8})
    engine.add(request("a", [5, 6, 7], max_tokens=10))
    in_flight = [worker.step(engine.build_plan()), worker.step(engine.build_plan())]
    engine.process_result(in_flight.pop(0))  # samples 8
    in_flight.append(worker.step(engine.build_plan()))
    engine.process_result(in_flight.pop(0))  # samples EOS: a ends
    last = engine.build_plan()
    assert shape(last) == ([], [], [0])
    engine.process_result(in_flight.pop(0))  # the speculative token: dropped
    engine.process_result(worker.step(last))
    events = engine.take_events()
    assert tokens_of(events, "a") == [8]
    done = done_of(events, "a")
    assert (done.finish_reason, done.num_completion_tokens) == (FinishReason.EOS, 2)
    assert engine.block_manager.num_free_blocks == 32 and not engine.has_work()


def test_eos_and_stop_ids_count_only_after_min_tokens_and_eos_not_with_ignore_eos():
    def run(params: SamplingParams) -> tuple[list[int], RequestDone]:
        engine, worker = make_engine()
        engine.add(Request("r", (997,), params))
        events = run_engine(engine, worker)
        return tokens_of(events, "r"), done_of(events, "r")

    tokens, done = run(SamplingParams(max_tokens=5, min_tokens=1))
    assert (tokens, done.finish_reason, done.num_completion_tokens) == ([998], FinishReason.EOS, 2)
    tokens, done = run(SamplingParams(max_tokens=5, min_tokens=2))
    assert (tokens, done.finish_reason) == ([998, 999, 0, 1, 2], FinishReason.LENGTH)
    tokens, done = run(SamplingParams(max_tokens=5, ignore_eos=True))
    assert (tokens, done.finish_reason) == ([998, 999, 0, 1, 2], FinishReason.LENGTH)
    tokens, done = run(SamplingParams(max_tokens=5, min_tokens=2, stop_token_ids=(0,)))
    assert (tokens, done.finish_reason, done.num_completion_tokens) == ([998, 999], FinishReason.STOP, 3)


def test_max_model_len_ends_a_sequence_with_length():
    engine, worker = make_engine(max_model_len=8)
    engine.add(request("r", [1, 2, 3, 4, 5, 6], max_tokens=10))
    events = run_engine(engine, worker)
    assert tokens_of(events, "r") == [7, 8]
    assert done_of(events, "r").finish_reason is FinishReason.LENGTH


def test_abort_frees_blocks_of_waiting_prefilling_and_decoding_requests():
    engine, worker = make_engine(num_blocks=16, budget=4, max_num_seqs=2)
    engine.add(request("decoding", [1, 2], max_tokens=10))
    engine.add(request("prefilling", list(range(10, 20))))
    engine.add(request("waiting", [30, 31]))
    assert shape(step_sync(engine, worker)) == ([(0, 0, 2), (1, 0, 2)], [], [])
    assert shape(step_sync(engine, worker)) == ([], [(0, 1), (1, 3)], [])
    assert engine.block_manager.num_free_blocks == 13
    for key in ("decoding", "prefilling", "waiting"):
        assert engine.abort(key)
    assert engine.block_manager.num_free_blocks == 16
    assert shape(engine.build_plan()) == ([], [], [0, 1])
    events = engine.take_events()
    assert [(e.key, e.finish_reason) for e in events if isinstance(e, RequestDone)] == [
        ("decoding", FinishReason.ABORT), ("prefilling", FinishReason.ABORT), ("waiting", FinishReason.ABORT)]
    assert not engine.abort("waiting")


def test_an_aborted_request_reports_its_prompt_and_the_tokens_generated_before_the_abort():
    engine, worker = make_engine()
    engine.add(request("r", [1, 2, 3, 4, 5], max_tokens=10))
    for _ in range(3):
        step_sync(engine, worker)
    assert engine.abort("r")
    events = engine.take_events()
    done = done_of(events, "r")
    assert (done.finish_reason, done.num_prompt_tokens, done.num_completion_tokens) == (FinishReason.ABORT, 5, 3)
    assert len(tokens_of(events, "r")) == 3


def test_deadline_expiry_ends_a_request_in_any_state_and_frees_its_blocks():
    now = [0.0]
    limits = WorkerLimits(block_size=4, num_kv_blocks=8, max_num_seqs=1, max_num_batched_tokens=64,
                          max_model_len=64)
    engine = Engine(SchedulerConfig(), limits, clock=lambda: now[0])
    worker = FakeWorker(8, 4)
    engine.add(Request("running", (1, 2, 3), SamplingParams(max_tokens=50), deadline=10.0))
    engine.add(Request("queued", (4, 5), SamplingParams(max_tokens=50), deadline=5.0))
    step_sync(engine, worker)
    now[0] = 6.0
    step_sync(engine, worker)
    now[0] = 11.0
    assert shape(engine.build_plan()) == ([], [], [0])
    errors = [(e.key, e.code.name) for e in engine.take_events() if not isinstance(e, NewTokens)]
    assert errors == [("queued", "DEADLINE_EXCEEDED"), ("running", "DEADLINE_EXCEEDED")]
    assert engine.block_manager.num_free_blocks == 8


def test_a_failed_sequence_ends_with_its_error_and_its_batch_mates_continue():
    engine, worker = make_engine()
    engine.add(request("ok", [1, 2, 3, 4, 5], max_tokens=3))
    engine.add(request("bad", [10, 11, 12, 13, 14], max_tokens=3))
    plan = engine.build_plan()
    result = worker.step(plan)
    kept = [row for row in result.sampled.rows() if row[0] == 0]
    result.sampled = SampledTokens(*map(list, zip(*kept)))
    result.errors = [SeqError(1, InvalidArgument("logits are not finite"))]
    engine.process_result(result)
    assert list(engine.block_manager.cached.values()) == [0]  # the failed one's block 2 may hold no KV
    events = engine.take_events()
    assert [(e.key, e.code, e.message) for e in events if isinstance(e, RequestFailed)] == [
        ("bad", ErrorCode.INVALID_ARGUMENT, "logits are not finite")]
    plan = engine.build_plan()
    assert shape(plan) == ([], [(0, 1)], [1])
    engine.process_result(worker.step(plan))
    events = run_engine(engine, worker)
    assert tokens_of(events, "ok") == [7, 8]
    assert engine.block_manager.num_free_blocks == 32
