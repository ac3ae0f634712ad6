"""Random add / step / finish / abort / preempt / deadline sequences against the fake worker.

After every operation: each block is free, or referenced by exactly the running sequences that list it;
free plus used equals the total; the prefix cache maps only to blocks holding that hash. When every
request has ended the pool is all free again. The fake worker checks on every step that the KV each
sequence reads is where its block table says (so a wrong prefix hit or a block freed too early fails).
"""

from __future__ import annotations

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.common.sampling import SamplingParams
from services.common.step import StepResult
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine import Engine
from services.scheduler.request_events import Request, RequestDone, RequestFailed
from tests.unit.scheduler.fake_worker import FakeWorker

NUM_BLOCKS = 12
BLOCK_SIZE = 2

# Prompts drawn from few tokens and shared heads, so prefixes repeat and the cache is hit.
prompts = st.tuples(st.sampled_from([(), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6)]),
                    st.lists(st.integers(1, 3), min_size=1, max_size=5)).map(lambda t: t[0] + tuple(t[1]))


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(["continuous", "static"]), budget=st.sampled_from([3, 8, 64]),
                caching=st.booleans(), in_flight=st.sampled_from([1, 2, 3, 4]))
    def setup(self, policy: str, budget: int, caching: bool, in_flight: int) -> None:
        self.now = 0.0
        limits = WorkerLimits(block_size=BLOCK_SIZE, num_kv_blocks=NUM_BLOCKS, max_num_seqs=4,
                              max_num_batched_tokens=budget, max_model_len=32, eos_token_ids=(7,))
        config = SchedulerConfig(policy=policy, enable_prefix_caching=caching, max_steps_in_flight=in_flight)
        self.engine = Engine(config, limits, clock=lambda: self.now)
        self.worker = FakeWorker(NUM_BLOCKS, BLOCK_SIZE, vocab_size=8, eos_token_id=7, eos_after=frozenset({6}))
        self.in_flight: list[StepResult] = []
        self.live: set[int] = set()
        self.next_key = 0

    def _collect(self) -> None:
        for event in self.engine.take_events():
            if isinstance(event, (RequestDone, RequestFailed)):
                assert event.key in self.live, f"second terminal event for {event.key}"
                self.live.discard(event.key)

    @rule(prompt=prompts, max_tokens=st.integers(1, 6), priority=st.integers(0, 2),
          deadline=st.sampled_from([0.0, 0.0, 3.0, 8.0]))
    def add(self, prompt: tuple[int, ...], max_tokens: int, priority: int, deadline: float) -> None:
        params = SamplingParams(max_tokens=max_tokens, min_tokens=min(1, max_tokens))
        self.engine.add(Request(self.next_key, prompt, params, priority, deadline))
        self.live.add(self.next_key)
        self.next_key += 1

    @rule()
    def plan(self) -> None:
        plan = self.engine.build_plan()
        if plan is not None:
            self.in_flight.append(self.worker.step(plan))
        self._collect()

    @precondition(lambda self: bool(self.in_flight))
    @rule()
    def deliver(self) -> None:
        self.engine.process_result(self.in_flight.pop(0))
        self._collect()

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.live)))
        assert self.engine.abort(key)
        self._collect()

    @precondition(lambda self: bool(self.engine.scheduler.running))
    @rule(data=st.data())
    def preempt(self, data: st.DataObject) -> None:
        scheduler = self.engine.scheduler
        seq = data.draw(st.sampled_from(list(scheduler.running.values())))
        scheduler._preempt(seq, _Sink())  # noqa: SLF001 - a preemption forced outside schedule()

    @rule(dt=st.sampled_from([1.0, 4.0]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def blocks_are_free_or_referenced_by_exactly_their_users(self) -> None:
        if not hasattr(self, "engine"):
            return
        bm = self.engine.block_manager
        users = Counter(b for seq in self.engine.scheduler.running.values() for b in seq.block_table)
        for block in bm.blocks:
            assert block.ref_count == users[block.block_id], (block.block_id, block.ref_count, users)
        free = list(bm.free_block_ids) + list(bm.evictable)
        assert len(free) == len(set(free))
        assert set(free) == {b.block_id for b in bm.blocks if b.ref_count == 0}
        assert bm.num_free_blocks + bm.num_used_blocks == NUM_BLOCKS
        assert all(bm.blocks[i].hash is not None for i in bm.evictable)
        assert all(bm.blocks[i].hash == h for h, i in bm.cached.items())
        for seq in self.engine.scheduler.running.values():
            assert len(seq.block_table) * BLOCK_SIZE >= seq.num_computed_tokens

    def teardown(self) -> None:
        if not hasattr(self, "engine"):
            return
        for key in sorted(self.live):
            self.engine.abort(key)
        self._collect()
        for _ in range(100):
            plan = self.engine.build_plan()
            if plan is not None:
                self.in_flight.append(self.worker.step(plan))
            if not self.in_flight:
                break
            self.engine.process_result(self.in_flight.pop(0))
        assert not self.engine.has_work()
        assert not self.live
        assert self.engine.block_manager.num_free_blocks == NUM_BLOCKS
        assert self.worker.seqs == {}  # the worker was told to forget every sequence


class _Sink:
    """Stands in for a SchedulerOutput when a test preempts outside schedule()."""

    def __init__(self) -> None:
        self.preempted: list = []


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
