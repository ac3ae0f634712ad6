"""A pure-Python stand-in for a worker: it follows step plans exactly as the worker protocol says and
checks them, so scheduler tests fail when a plan is wrong.

It keeps a fake KV cache (the token id written at every slot) and verifies, for every token it runs, that
the KV of every earlier position is in the block table where the plan says it is: a prefix hit on the wrong
block, a block freed while still needed, or a missing block all raise. It samples (last token + 1) % vocab,
or `eos_token_id` when the last token is in `eos_after`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.step import StepPlan, StepResult


class PlanError(AssertionError):
    """The scheduler sent a plan the worker could not run."""


@dataclass
class _WorkerSeq:
    token_ids: list[int]
    block_ids: list[int]
    num_computed: int


@dataclass
class FakeWorker:
    num_blocks: int
    block_size: int
    vocab_size: int = 1000
    eos_token_id: int = 999
    eos_after: frozenset[int] = frozenset()  # sample EOS right after any of these tokens
    seqs: dict[int, _WorkerSeq] = field(default_factory=dict)
    kv: dict[tuple[int, int], int] = field(default_factory=dict)  # (block, slot) -> token id written there
    steps: list[StepPlan] = field(default_factory=list)
    num_computed_tokens_total: int = 0

    def next_token(self, last: int) -> int:
        return self.eos_token_id if last in self.eos_after else (last + 1) % self.vocab_size

    def step(self, plan: StepPlan) -> StepResult:
        if self.steps and plan.step_id != self.steps[-1].step_id + 1:
            raise PlanError(f"step {plan.step_id} follows step {self.steps[-1].step_id}")
        self.steps.append(plan)
        for seq_id in plan.finished_seq_ids:
            if self.seqs.pop(seq_id, None) is None:
                raise PlanError(f"finished seq {seq_id} is unknown")
        result = StepResult(plan.step_id)
        seen: set[int] = set()
        for new in plan.new_seqs:
            if new.seq_id in self.seqs:
                raise PlanError(f"NewSeq {new.seq_id} is already held")
            self.seqs[new.seq_id] = _WorkerSeq(list(new.token_ids), list(new.block_ids), new.num_computed_tokens)
            self._check_context(new.seq_id, new.num_computed_tokens)
        work = [(n.seq_id, n.num_scheduled_tokens) for n in plan.new_seqs]
        for seq_id, new_block_ids, num_scheduled_tokens in plan.cached_seqs.rows():
            seq = self.seqs.get(seq_id)
            if seq is None:
                raise PlanError(f"cached seq {seq_id} is unknown")
            seq.block_ids.extend(new_block_ids)
            work.append((seq_id, num_scheduled_tokens))
        for seq_id, num in work:
            if seq_id in seen or num <= 0:
                raise PlanError(f"seq {seq_id} scheduled twice or with {num} tokens")
            seen.add(seq_id)
            token = self._run(seq_id, num)
            if token is not None:
                result.sampled.append(seq_id, token)
        return result

    def _check_context(self, seq_id: int, upto: int) -> None:
        seq = self.seqs[seq_id]
        for pos in range(upto):
            slot = self._slot(seq, pos)
            if self.kv.get(slot) != seq.token_ids[pos]:
                raise PlanError(f"seq {seq_id}: KV at position {pos} (slot {slot}) is {self.kv.get(slot)}, "
                                f"expected token {seq.token_ids[pos]}")

    def _slot(self, seq: _WorkerSeq, pos: int) -> tuple[int, int]:
        index = pos // self.block_size
        if index >= len(seq.block_ids):
            raise PlanError(f"position {pos} has no block (table {seq.block_ids})")
        block = seq.block_ids[index]
        if not 0 <= block < self.num_blocks:
            raise PlanError(f"block id {block} out of range")
        return block, pos % self.block_size

    def _run(self, seq_id: int, num: int) -> int | None:
        seq = self.seqs[seq_id]
        end = seq.num_computed + num
        if end > len(seq.token_ids):
            raise PlanError(f"seq {seq_id}: runs to {end} but knows {len(seq.token_ids)} tokens")
        for pos in range(seq.num_computed, end):
            self.kv[self._slot(seq, pos)] = seq.token_ids[pos]
        self._check_context(seq_id, end)
        self.num_computed_tokens_total += num
        seq.num_computed = end
        if end < len(seq.token_ids):
            return None  # a prefill chunk in the middle samples nothing
        token = self.next_token(seq.token_ids[-1])
        seq.token_ids.append(token)
        return token


def run_engine(engine, worker: FakeWorker, max_steps: int = 10_000) -> list:  # noqa: ANN001 - an Engine
    """Drives an Engine against the fake worker, keeping as many plans in flight as the engine allows,
    until nothing is left to do; returns every event in order."""
    in_flight: list[StepResult] = []
    events: list = []
    for _ in range(max_steps):
        while (plan := engine.build_plan()) is not None:
            in_flight.append(worker.step(plan))
        events.extend(engine.take_events())
        if not in_flight:
            if engine.has_work():
                raise PlanError("the engine has work but scheduled nothing")
            return events
        engine.process_result(in_flight.pop(0))
        events.extend(engine.take_events())
    raise PlanError(f"not idle after {max_steps} steps")
