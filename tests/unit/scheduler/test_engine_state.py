"""The pool's state for watchers: gauges per worker and counters that survive a worker leaving."""

from __future__ import annotations

from services.common.sampling import SamplingParams
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine_pool import EnginePool
from services.scheduler.engine_state import EngineTotals, WorkerEngineState
from services.scheduler.request_events import Request
from tests.unit.scheduler.fake_worker import FakeWorker, run_engine

LIMITS = WorkerLimits(block_size=4, num_kv_blocks=8, max_num_seqs=4, max_num_batched_tokens=64,
                      max_model_len=64, vocab_size=1000, model_id="m")
PREFIX = list(range(100, 108))  # two full blocks of 4


def req(key: str, prompt: list[int], max_tokens: int) -> Request:
    return Request(key, tuple(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def test_counters_add_steps_tokens_and_prefix_hits_and_outlive_the_worker() -> None:
    pool = EnginePool(SchedulerConfig(), clock=lambda: 1000.0)
    engine = pool.add_worker("w0", LIMITS)
    pool.route(req("a", PREFIX + [1], max_tokens=3))
    waiting = pool.state()
    assert (waiting.num_running, waiting.num_waiting, waiting.model_id) == (0, 1, "m")
    assert waiting.workers == (WorkerEngineState("w0", 0, 1, 0.0),)

    worker = FakeWorker(8, 4)
    run_engine(engine, worker)
    pool.route(req("b", PREFIX + [2], max_tokens=1))
    run_engine(engine, worker)
    # a: one prefill step of 9 tokens, then one decode token per step for its 2nd and 3rd tokens;
    # b: its last prompt token only (8 of 9 were cached), which samples its one token.
    assert pool.totals() == EngineTotals(num_steps=4, num_step_tokens=9 + 1 + 1 + 1, num_generated_tokens=4,
                                         num_prefix_query_tokens=18, num_prefix_hit_tokens=8)

    pool.remove_worker("w0", "gone")
    pool.add_worker("w1", LIMITS)
    state = pool.state()
    assert state.totals == EngineTotals(4, 12, 4, 18, 8)
    assert state.workers == (WorkerEngineState("w1", 0, 0, 0.0),)
    assert (state.time_unix_s, state.kv_cache_usage) == (1000.0, 0.0)
