"""One worker's engine: turns scheduler output into step plans and step results into per-request events.

Up to `max_steps_in_flight` plans may be unanswered. A sequence sampled by an unanswered step carries a
placeholder token (see Sequence); when the result shows that token finished it, the sequence is freed and
listed in the next plan's finished_seq_ids, and the token its in-flight successor step samples is dropped
(its seq id is no longer live).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from services.common.errors import ErrorCode
from services.common.finish_reason import FinishReason
from services.common.step import NewSeq, StepPlan, StepResult
from services.scheduler.block_manager import BlockManager
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine_state import EngineTotals
from services.scheduler.request_events import Event, NewTokens, Request, RequestDone, RequestFailed
from services.scheduler.scheduler import Scheduler
from services.scheduler.sequence import Sequence

if TYPE_CHECKING:
    from services.common.metrics import Metrics

log = logging.getLogger(__name__)

_LENGTH = FinishReason.LENGTH


class Engine:
    """Scheduler, block manager and in-flight bookkeeping of one worker connection."""

    def __init__(
        self,
        config: SchedulerConfig,
        limits: WorkerLimits,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.scheduler = Scheduler(config, limits, metrics)
        self.metrics = metrics
        self.clock = clock
        self.max_steps_in_flight = config.max_steps_in_flight
        self.eos_token_ids = frozenset(limits.eos_token_ids)
        self.sequences: dict[Hashable, Sequence] = {}  # live requests by key
        self.events: list[Event] = []
        self.in_flight: deque[int] = deque()  # step ids sent and not answered, oldest first
        self._next_step_id = 0

    # ---- requests ----

    @property
    def block_manager(self) -> BlockManager:
        return self.scheduler.block_manager

    @property
    def totals(self) -> EngineTotals:
        return self.scheduler.totals

    @property
    def num_requests(self) -> int:
        return len(self.sequences)

    def add(self, request: Request) -> Sequence:
        """Queues a validated request; its events appear in `events` from the next step on."""
        if request.key in self.sequences:
            raise KeyError(f"request {request.key!r} is already live")
        seq = Sequence(
            request.key, list(request.prompt_token_ids), request.params, request.priority, request.deadline,
            arrival_time=self.clock(), max_model_len=self.limits.max_model_len, eos_token_ids=self.eos_token_ids,
        )
        seq.traceparent = request.traceparent
        self.sequences[request.key] = seq
        self.scheduler.add(seq)
        return seq

    def abort(self, key: Hashable) -> bool:
        """Ends a live request with ABORT and frees its blocks; False when it is not live here."""
        seq = self.sequences.get(key)
        if seq is None:
            return False
        self._end(seq, self._done(seq, FinishReason.ABORT))  # usage counts what ran before the abort
        return True

    def fail_all(self, code: ErrorCode, message: str) -> None:
        """Ends every live request with an error (the worker is gone); the engine is not used again."""
        for seq in list(self.sequences.values()):
            self._end(seq, RequestFailed(seq.key, code, message), keep_cached=False)
        self.in_flight.clear()

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    # ---- steps ----

    def has_work(self) -> bool:
        return self.scheduler.has_unfinished()

    def can_send(self) -> bool:
        return len(self.in_flight) < self.max_steps_in_flight

    def next_deadline(self) -> float | None:
        return self.scheduler.next_deadline()

    def build_plan(self) -> StepPlan | None:
        """Schedules the next step; None when nothing can run now (or too many steps are in flight)."""
        if not self.can_send():
            return None
        now = self.clock()
        out = self.scheduler.schedule(now)
        for seq in out.expired:
            self._end(seq, RequestFailed(seq.key, ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded"))
        if out.is_empty:
            return None
        plan = StepPlan(self._next_step_id, finished_seq_ids=out.finished_seq_ids)
        self._next_step_id += 1
        totals = self.totals
        totals.num_steps += bool(out.scheduled)  # a plan that only lists finished ids runs nothing
        num_step_tokens = 0
        cached = plan.cached_seqs
        scheduled = out.scheduled
        for seq, num_new, computed_before in zip(scheduled.seqs, scheduled.num_new_tokens,
                                                 scheduled.num_computed_before):
            num_step_tokens += num_new
            table = seq.block_table
            if seq.is_sent:  # CachedSeqs.append's work inline, with no slice for a table that did not grow
                sent = seq.num_sent_blocks
                cached.seq_ids.append(seq.seq_id)
                cached.num_scheduled_tokens.append(num_new)
                if len(table) > sent:
                    cached.num_new_blocks.append(len(table) - sent)
                    cached.new_block_ids.extend(table[sent:])
                else:
                    cached.num_new_blocks.append(0)
            else:
                plan.new_seqs.append(NewSeq(
                    seq.seq_id, list(seq.token_ids), seq.num_prompt_tokens, seq.params, list(table),
                    computed_before, num_new, seq.traceparent,
                ))
                seq.is_sent = True
            seq.num_sent_blocks = len(table)
        totals.num_step_tokens += num_step_tokens
        self.in_flight.append(plan.step_id)
        return plan

    def process_result(self, result: StepResult) -> None:
        """Applies a worker's answer to the oldest in-flight plan."""
        if not self.in_flight or self.in_flight[0] != result.step_id:
            expected = self.in_flight[0] if self.in_flight else None
            raise RuntimeError(f"worker answered step {result.step_id}, expected {expected}")
        self.in_flight.popleft()
        now = self.clock()
        running = self.scheduler.running
        block_size = self.limits.block_size
        for error in result.errors:
            seq = running.get(error.seq_id)
            if seq is not None:
                self._end(seq, RequestFailed(seq.key, error.error.code, error.error.message), keep_cached=False)
        num_generated = 0
        # The step's tokens go in one event, placed before the ends this loop emits: a request's last tokens then
        # precede its end.
        tokens = NewTokens()
        position = len(self.events)
        self.events.append(tokens)
        add_key, add_token, add_logprobs = tokens.keys.append, tokens.token_ids.append, tokens.logprobs.append
        for seq_id, token_id, logprobs in result.sampled.rows():
            seq = running.get(seq_id)
            if seq is None or seq.num_placeholders == 0:
                continue  # ended, preempted, or a token sampled after its sequence finished
            seq.num_placeholders -= 1
            token_ids = seq.token_ids
            token_ids.append(token_id)
            num_generated += 1
            if seq.first_token_time is None:
                seq.first_token_time = now
            seq.last_token_time = now
            num_tokens = len(token_ids)
            reason = None
            if token_id in seq.stop_ids or num_tokens >= seq.token_limit:
                reason = self._finish_reason(seq, token_id)
            if reason is None or reason is _LENGTH:  # the stop token itself is not part of the output
                add_key(seq.key)
                add_token(token_id)
                add_logprobs(logprobs)
                seq.num_emitted_tokens += 1
            if reason is not None:
                self._end(seq, self._done(seq, reason))
            elif num_tokens % block_size == 0:
                self.scheduler.block_manager.cache_full_blocks(seq)  # this token completed a block
        if not tokens:
            del self.events[position]
        self.totals.num_generated_tokens += num_generated
        if self.metrics is not None and num_generated:
            self.metrics.generation_tokens.inc(num_generated)

    # ---- internals ----

    @staticmethod
    def _finish_reason(seq: Sequence, token_id: int) -> FinishReason | None:
        params = seq.params
        if token_id in seq.stop_ids and len(seq.token_ids) - seq.num_prompt_tokens > params.min_tokens:
            # Stop ids count only once min_tokens came before them.
            return FinishReason.STOP if token_id in params.stop_token_ids else FinishReason.EOS
        if len(seq.token_ids) >= seq.token_limit:
            return FinishReason.LENGTH
        return None

    def _done(self, seq: Sequence, reason: FinishReason) -> RequestDone:
        started = seq.first_scheduled_time
        first = seq.first_token_time
        return RequestDone(
            seq.key, reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_completion_tokens=seq.num_output_tokens,
            num_cached_tokens=min(seq.num_cached_tokens, seq.num_prompt_tokens),
            queue_s=max(0.0, started - seq.arrival_time) if started is not None else 0.0,
            prefill_s=max(0.0, first - started) if first is not None and started is not None else 0.0,
            decode_s=max(0.0, seq.last_token_time - first) if first is not None and seq.last_token_time else 0.0,
        )

    def _end(self, seq: Sequence, event: Event, keep_cached: bool = True) -> None:
        self.scheduler.finish(seq, keep_cached=keep_cached)
        self.sequences.pop(seq.key, None)
        self.events.append(event)
        if self.metrics is not None and isinstance(event, RequestDone):
            m = self.metrics
            m.request_prompt_tokens.observe(event.num_prompt_tokens)
            m.request_generation_tokens.observe(event.num_completion_tokens)
            if seq.first_token_time is not None:  # an abort before the first token has no prefill time
                m.request_prefill_time.observe(event.prefill_s)
                m.request_decode_time.observe(event.decode_s)
