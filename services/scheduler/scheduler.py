"""The batching policy of one worker: which sequences run in the next step, and with how many tokens."""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.scheduler.block_manager import BlockManager
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine_state import EngineTotals
from services.scheduler.sequence import Sequence, SequenceStatus

if TYPE_CHECKING:
    from services.common.metrics import Metrics

log = logging.getLogger(__name__)

_RUNNING = SequenceStatus.RUNNING
_WAITING = SequenceStatus.WAITING
_FINISHED = SequenceStatus.FINISHED


@dataclass(slots=True)
class ScheduledSeqs:
    """The sequences of one step, one column per field (a busy step has a thousand rows, each an object more to make
    otherwise): seqs[i] runs num_new_tokens[i] tokens, starting at num_computed_before[i], the tokens whose KV the
    worker holds (or will, from earlier steps) before this step."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_computed_before: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    def append(self, seq: Sequence, num_new_tokens: int, num_computed_before: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.num_computed_before.append(num_computed_before)


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: ScheduledSeqs = field(default_factory=ScheduledSeqs)
    finished_seq_ids: list[int] = field(default_factory=list)  # seq ids the worker must forget first
    preempted: list[Sequence] = field(default_factory=list)
    expired: list[Sequence] = field(default_factory=list)  # ended by their deadline in this call

    @property
    def is_empty(self) -> bool:
        return not self.scheduled and not self.finished_seq_ids


class Scheduler:
    """Queues, running set and block manager of one worker."""

    def __init__(
        self,
        config: SchedulerConfig,
        limits: WorkerLimits,
        metrics: Metrics | None = None,
    ) -> None:
        self.static = config.policy == "static"
        self.admit_batch = config.admit_batch
        self.admit_wait_s = config.admit_wait_ms / 1000
        self._held_since: float | None = None  # when admission into free seats was first held back
        self.max_num_seqs = min(config.max_num_seqs, limits.max_num_seqs)
        self.max_num_batched_tokens = min(config.max_num_batched_tokens, limits.max_num_batched_tokens)
        self.block_manager = BlockManager(limits.num_kv_blocks, limits.block_size, config.enable_prefix_caching)
        # Plans that can follow an admission before its result is back, each giving the sequence a token more.
        self.num_lookahead_tokens = config.max_steps_in_flight - 1
        self.metrics = metrics
        self.totals = EngineTotals()
        self.waiting: list[tuple[int, int, Sequence]] = []  # heap of (priority, arrival_order, seq)
        self.num_waiting = 0
        self.running: dict[int, Sequence] = {}  # seq_id -> sequence, in admission order
        self._deadlines: list[tuple[float, int, Sequence]] = []  # heap of (deadline, arrival_order, seq)
        self._pending_finished_ids: list[int] = []
        self._next_seq_id = 0
        self._next_arrival = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.running) or self.num_waiting > 0 or bool(self._pending_finished_ids)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a queued or running sequence (ended ones may linger until popped)."""
        return self._deadlines[0][0] if self._deadlines else None

    def add(self, seq: Sequence) -> None:
        """Queues a new sequence (validated by the caller)."""
        seq.arrival_order = self._next_arrival
        self._next_arrival += 1
        seq.status = _WAITING
        heapq.heappush(self.waiting, (seq.priority, seq.arrival_order, seq))
        self.num_waiting += 1
        if seq.deadline > 0:
            heapq.heappush(self._deadlines, (seq.deadline, seq.arrival_order, seq))

    def finish(self, seq: Sequence, keep_cached: bool = True) -> None:
        """Ends a sequence in any state: frees its blocks now and tells the worker in the next plan."""
        if seq.status is _FINISHED:
            return
        if seq.status is _WAITING:
            self.num_waiting -= 1  # its heap entry is skipped when it reaches the top
        else:
            del self.running[seq.seq_id]
            self.block_manager.free(seq, keep_cached=keep_cached)
            if seq.is_sent:
                self._pending_finished_ids.append(seq.seq_id)
        seq.status = _FINISHED

    def schedule(self, now: float) -> SchedulerOutput:
        # Policy. Every step gives each sequence the tokens that bring its computed tokens up to its known
        # (or speculatively sampled) tokens, within a budget of max_num_batched_tokens and max_num_seqs:
        #   1. running sequences first, in admission order: decodes (one token each), then unfinished
        #      prefill chunks, each cut to the budget left, so a long prompt never makes decodes wait;
        #   2. then waiting sequences, lowest priority value first and FCFS within a priority, each taking
        #      its longest cached prefix plus a chunk of the rest; the queue head blocks those behind it.
        # A sequence whose step reaches the end of its tokens samples: a placeholder token is counted for
        # it, so the next step can already give it a decode slot before this step's result arrives.
        # When blocks run out, the newest running sequence not yet in this step is preempted (blocks freed,
        # recomputed from its known tokens later) and no waiting sequence is admitted in that step.
        # A waiting sequence is admitted only while free blocks also cover the tokens the plans that may follow
        # before its first result give it (`_lookahead`), so a preempted one does not return to thrash.
        # While the running batch is full, waiting sequences join admit_batch at a time (see `_holds_admission`).
        # Static policy (the baseline): waiting sequences are admitted only when nothing runs, so a batch
        # runs to completion before the next one starts.
        out = SchedulerOutput(expired=self._expire(now))
        bm = self.block_manager
        budget = self.max_num_batched_tokens
        scheduled_ids: set[int] = set()
        admit = not (self.static and self.running)
        prefills: list[Sequence] = []
        block_size = bm.block_size
        scheduled = out.scheduled
        # The inline decode's appends, bound once: the loop runs for every running sequence of every step.
        add_seq, add_num, add_before = (scheduled.seqs.append, scheduled.num_new_tokens.append,
                                        scheduled.num_computed_before.append)
        for seq in list(self.running.values()):
            if seq.status is not _RUNNING:
                continue  # preempted in this loop
            num_tokens = len(seq.token_ids) + seq.num_placeholders
            if num_tokens >= seq.token_limit:
                continue  # waiting for its last result
            computed = seq.num_computed_tokens
            if num_tokens - computed != 1:
                prefills.append(seq)
            elif budget <= 0:
                continue
            elif computed < len(seq.block_table) * block_size and seq.first_scheduled_time is not None:
                # A decode within its blocks, most rows of most steps: _commit's work inline.
                seq.num_computed_tokens = num_tokens
                seq.num_placeholders += 1  # it samples in this step
                scheduled_ids.add(seq.seq_id)
                add_seq(seq)
                add_num(1)
                add_before(computed)
                budget -= 1
            elif self._schedule_running(seq, 1, now, scheduled_ids, out):
                budget -= 1
        num_decode = len(scheduled)
        for seq in prefills:
            if budget <= 0:
                break
            if seq.status is not _RUNNING:
                continue
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if self._schedule_running(seq, num_new, now, scheduled_ids, out):
                budget -= num_new
        if admit and num_decode and len(scheduled) == num_decode and self._holds_admission(now):
            admit = False
        elif admit:
            self._held_since = None
        if admit and not out.preempted:
            budget = self._admit(budget, now, scheduled_ids, out)
        for seq in scheduled.seqs:
            if seq.num_computed_tokens >= (seq.num_registered_blocks + 1) * block_size:  # a block filled up
                bm.cache_full_blocks(seq)
        out.finished_seq_ids = self._pending_finished_ids
        self._pending_finished_ids = []
        return out

    def _holds_admission(self, now: float) -> bool:
        """Whether a step of decode rows alone should stay so: some seats are free, but fewer than admit_batch (and
        than the waiting sequences), and seats have been held free for less than admit_wait_s. Counted from the
        first held step, not from a sequence's arrival: under a queue longer than the batch every sequence has
        waited long when a seat frees, and that is when admissions one by one cost the most."""
        free = self.max_num_seqs - len(self.running)
        if free <= 0 or free >= min(self.admit_batch, self.num_waiting):
            return False
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since < self.admit_wait_s

    def _schedule_running(
        self, seq: Sequence, num_new: int, now: float, scheduled_ids: set[int], out: SchedulerOutput
    ) -> bool:
        bm = self.block_manager
        if seq.num_computed_tokens + num_new > len(seq.block_table) * bm.block_size:  # needs a new block
            while not bm.can_append(seq, num_new):
                victim = self._newest_unscheduled(scheduled_ids)
                self._preempt(victim, out)
                if victim is seq:
                    return False
            bm.append_slots(seq, num_new)
        self._commit(seq, num_new, now, scheduled_ids, out)
        return True

    def _admit(self, budget: int, now: float, scheduled_ids: set[int], out: SchedulerOutput) -> int:
        bm = self.block_manager
        while self.waiting and len(self.running) < self.max_num_seqs and (budget > 0 or self.static):
            seq = self.waiting[0][2]
            if seq.status is _FINISHED:
                heapq.heappop(self.waiting)
                continue
            hits = bm.match_prefix(seq)
            num_new = min(seq.num_tokens - len(hits) * bm.block_size, budget)
            if not bm.can_allocate(seq, hits, num_new, self._lookahead(seq, len(hits) * bm.block_size + num_new)):
                break
            heapq.heappop(self.waiting)
            self.num_waiting -= 1
            bm.allocate(seq, hits, num_new)
            if seq.num_preemptions == 0:  # usage reports the prompt tokens the first admission found cached
                seq.num_cached_tokens = seq.num_computed_tokens
            seq.status = _RUNNING
            seq.seq_id = self._next_seq_id
            self._next_seq_id += 1
            self.running[seq.seq_id] = seq
            self.totals.num_prefix_query_tokens += len(seq.token_ids)
            self.totals.num_prefix_hit_tokens += seq.num_computed_tokens
            if self.metrics is not None:
                self.metrics.prefix_cache_queries.inc(len(seq.token_ids))
                self.metrics.prefix_cache_hits.inc(seq.num_computed_tokens)
            if num_new > 0:
                self._commit(seq, num_new, now, scheduled_ids, out)
                budget -= num_new
        return budget

    def _lookahead(self, seq: Sequence, num_computed: int) -> int:
        """Tokens past num_computed that must find free blocks for the sequence to be admitted.

        A preempted sequence loses the tokens its in-flight steps sampled, so its known tokens can fit exactly the
        blocks it gave up; admitted into those, the plans already allowed in flight reach the block it lacked
        before the admission's result is back, and it is preempted again, recomputed each time. Asking for free
        blocks for those plans' tokens too (never past its last computed token) keeps it waiting until the block
        it lacked is free; with one plan in flight nothing is asked beyond the admission's own tokens."""
        return max(0, min(self.num_lookahead_tokens, seq.token_limit - 1 - num_computed))

    def _commit(
        self, seq: Sequence, num_new: int, now: float, scheduled_ids: set[int], out: SchedulerOutput
    ) -> None:
        before = seq.num_computed_tokens
        seq.num_computed_tokens = before + num_new
        if seq.num_computed_tokens == len(seq.token_ids) + seq.num_placeholders:
            seq.num_placeholders += 1  # the worker samples this sequence in this step
        if seq.first_scheduled_time is None:
            seq.first_scheduled_time = now
            if self.metrics is not None:
                self.metrics.request_queue_time.observe(max(0.0, now - seq.arrival_time))
        scheduled_ids.add(seq.seq_id)
        out.scheduled.append(seq, num_new, before)

    def _newest_unscheduled(self, scheduled_ids: set[int]) -> Sequence:
        for seq in reversed(self.running.values()):
            if seq.seq_id not in scheduled_ids:
                return seq
        raise RuntimeError("no running sequence left to preempt")

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        log.info(
            "preempting request %r (seq %d): %d computed tokens will be recomputed",
            seq.key, seq.seq_id, seq.num_computed_tokens,
        )
        del self.running[seq.seq_id]
        self.block_manager.free(seq)
        if seq.is_sent:
            self._pending_finished_ids.append(seq.seq_id)
        seq.reset_for_recompute()
        heapq.heappush(self.waiting, (seq.priority, seq.arrival_order, seq))
        self.num_waiting += 1
        out.preempted.append(seq)
        if self.metrics is not None:
            self.metrics.num_preemptions.inc()

    def _expire(self, now: float) -> list[Sequence]:
        expired = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            seq = heapq.heappop(deadlines)[2]
            if seq.status is not _FINISHED:
                self.finish(seq)
                expired.append(seq)
        if len(deadlines) > 64 + 2 * (len(self.running) + self.num_waiting):
            self._deadlines = [e for e in deadlines if e[2].status is not _FINISHED]
            heapq.heapify(self._deadlines)
        return expired
