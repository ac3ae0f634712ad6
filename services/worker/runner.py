"""The worker's core: applies each StepPlan to the sequences' state, runs the step and returns what it sampled.

Plans are processed strictly in order (the caller serialises them); a sequence that samples gets the token
appended to its own state, so the next plan's decode runs it. A problem with one sequence (an unknown id, a
block out of range, tokens beyond max_model_len) becomes a SeqError for that sequence alone.

Overlap. With two plans in flight the next plan is usually known while the current step runs. The current step
is then queued on the device with its sampling (see StepExecutor.can_launch: any step whose sampling rows need no
penalty over their own generated tokens), the next plan is applied to the table ahead of its turn, and the next
step is queued right behind the current one, each row whose input is the current step's sampled token taking it
from the device; only then does the host wait for the current step's tokens, so that wait, the result and the
next plan's bookkeeping overlap the device's work. The current step's tokens stand in the table as placeholders
(PENDING_TOKEN) until they are read, so the table after each step is exactly what the sequential path leaves.
Guided rows need the current step's token in their matcher before their next mask exists: the next step's forward
pass is queued all the same and its sampling held back until the tokens are read and the matchers advanced, so
the masks are filled while the device runs that forward pass. Steps with penalised rows, and steps with no next
plan in sight, run the sequential path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.errors import FlashStreamError, ResourceExhausted
from services.common.step import SampledTokens, SeqError, StepPlan, StepResult
from services.worker.device_tokens import DeviceTokens
from services.worker.executors import StepExecutor
from services.worker.grammar import GrammarCache
from services.worker.sampling.types import SamplerOutput
from services.worker.sequences import SequenceLimits, SequenceTable, StepSeq, unknown_seq

log = logging.getLogger(__name__)

# Waits up to the given seconds for the plan after the current one and returns it without taking it (None: none yet).
PlanSource = Callable[[float], StepPlan | None]


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one step ran: decode rows (one token that samples) and prefill rows (prompt chunks), apart, and how it
    reached the device."""

    num_prefill_seqs: int
    num_prefill_tokens: int
    num_decode_seqs: int
    # Launched before the host read the step before's tokens (queued behind it, its inputs taken from it on the
    # device); whether the device was still running that step then is the kernel timeline's to say.
    queued_ahead: bool = False
    # Seconds the host waited, while this step ran on the device, for the plan after it (0: it was already there).
    next_plan_wait_s: float = 0.0

    @property
    def kind(self) -> str:
        """"prefill", "decode" or "mixed" (both; "decode" also for an empty step)."""
        if self.num_prefill_seqs and self.num_decode_seqs:
            return "mixed"
        return "prefill" if self.num_prefill_seqs else "decode"

    @classmethod
    def of(cls, scheduled: list[StepSeq], queued_ahead: bool = False, next_plan_wait_s: float = 0.0) -> StepShape:
        decode = sum(seq.samples for seq in scheduled if seq.num_tokens == 1)
        tokens = sum(seq.num_tokens for seq in scheduled)
        return cls(len(scheduled) - decode, tokens - decode, decode, queued_ahead, next_plan_wait_s)


@dataclass(slots=True)
class Ahead:
    """A plan applied to the table before its turn; `launched` when its step is already queued on the device."""

    plan: StepPlan
    scheduled: list[StepSeq]
    errors: list[SeqError]
    launched: DeviceTokens | None = None
    failure: FlashStreamError | None = None


class Runner:
    """Plan in, result out; one SequenceTable per Step stream (a default one for in-process use)."""

    def __init__(
        self, executor: StepExecutor, limits: SequenceLimits, max_num_seqs: int, max_num_batched_tokens: int,
        overlap: bool = True, max_wait_next_s: float = 0.05, grammars: GrammarCache | None = None,
    ) -> None:
        self.executor = executor
        self.grammars = grammars  # compiles guided specs; None: guided sequences are refused
        self.limits = limits
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.overlap = overlap
        self.max_wait_next_s = max_wait_next_s  # a launched step waits at most this long for the next plan
        self.table = self.new_table()
        self.num_overlapped_steps = 0  # steps queued on the device before the previous step's tokens were read
        self.last_shape = StepShape(0, 0, 0)  # of the last step run

    def take_device_idle_s(self) -> float:
        """Seconds the device sat idle between steps since the last call (0 where not measured)."""
        return self.executor.take_device_idle_s()

    def new_table(self) -> SequenceTable:
        return SequenceTable(self.limits, self.grammars)

    def step(
        self, plan: StepPlan, table: SequenceTable | None = None, next_plan: StepPlan | None = None,
        wait_next: PlanSource | None = None,
    ) -> StepResult:
        """Runs `plan`. next_plan (or what wait_next returns while this step runs on the device) is the plan the
        caller passes next; it may be applied and launched now, and must then be the next call's plan."""
        start = time.perf_counter()
        table = self.table if table is None else table
        ahead, table.ahead = table.ahead, None
        if ahead is not None and ahead.plan is not plan:
            raise ValueError(f"plan {plan.step_id} given while plan {ahead.plan.step_id} was applied ahead of it")
        if ahead is None:
            scheduled, errors = self._apply(plan, table)
            launched, failure = None, None
            if len(table) == len(plan.new_seqs) and not plan.cached_seqs:
                self.executor.waited_for_work()  # every sequence it holds arrived with this plan
        else:
            scheduled, errors, launched, failure = ahead.scheduled, ahead.errors, ahead.launched, ahead.failure
        queued_ahead, waited = launched is not None, 0.0
        sampled = SampledTokens()
        wants_next = self.overlap and (next_plan is not None or wait_next is not None)
        if failure is None and scheduled and launched is None and wants_next and self.executor.can_launch(scheduled):
            try:
                launched = self.executor.launch(scheduled)
            except Exception as exc:  # noqa: BLE001 - the batch fails, the stream and the worker stay up
                failure = self._as_error(exc, plan)
        if failure is not None:
            self._fail(scheduled, errors, failure, table)
        elif launched is not None:
            pending = None
            if self.overlap and next_plan is None and wait_next is not None:
                next_plan, waited = self._wait_next(launched, wait_next)
            if self.overlap and next_plan is not None:
                pending = table.advance_launched(scheduled)
                table.ahead = self._apply_ahead(next_plan, scheduled, launched, table)
            sampled = self._collect(plan, scheduled, errors, launched, pending, table)
            if table.ahead is not None:
                self._draw_ahead(table.ahead)
        elif scheduled:
            sampled = self._run(plan, scheduled, errors, table)
        self.last_shape = StepShape.of(scheduled, queued_ahead, waited)
        return StepResult(plan.step_id, sampled, errors, time.perf_counter() - start)

    def _apply(self, plan: StepPlan, table: SequenceTable) -> tuple[list[StepSeq], list[SeqError]]:
        scheduled, errors = table.apply(plan)
        return self._within_budget(scheduled, errors, table), errors

    def _run(
        self, plan: StepPlan, scheduled: list[StepSeq], errors: list[SeqError], table: SequenceTable
    ) -> SampledTokens:
        """The sequential path: run, wait, sample on the host's terms, advance."""
        sampled = SampledTokens()
        try:
            results = self.executor.run(scheduled)
        except Exception as exc:  # noqa: BLE001 - the batch fails, the stream and the worker stay up
            self._fail(scheduled, errors, self._as_error(exc, plan), table)
            return sampled
        for seq, result in zip(scheduled, results, strict=True):
            try:
                table.advance(seq, None if result is None else result[0])
            except FlashStreamError as exc:
                self._refused(seq, exc, errors, table)
                continue
            if result is not None:
                sampled.append(seq.state.seq_id, *result)
        return sampled

    @staticmethod
    def _refused(seq: StepSeq, exc: FlashStreamError, errors: list[SeqError], table: SequenceTable) -> None:
        """A guided sequence's grammar refused its token: it alone fails."""
        table.drop_state(seq.state)
        errors.append(SeqError(seq.state.seq_id, exc))

    def _apply_ahead(
        self, next_plan: StepPlan, scheduled: list[StepSeq], launched: DeviceTokens, table: SequenceTable
    ) -> Ahead:
        """Applies the next plan now and queues its step behind the launched one when it can be launched."""
        nxt, errors = self._apply(next_plan, table)
        ahead = Ahead(next_plan, nxt, errors)
        if self.executor.can_launch(nxt):
            try:
                ahead.launched = self.executor.launch(nxt, launched)
                self.num_overlapped_steps += 1
            except Exception as exc:  # noqa: BLE001 - reported as that plan's failure at its turn
                ahead.failure = self._as_error(exc, next_plan)
        return ahead

    def _wait_next(self, launched: DeviceTokens, wait_next: PlanSource) -> tuple[StepPlan | None, float]:
        """The next plan, if it arrives before the launched step finishes on the device (or the wait limit), and the
        seconds waited for it (0 when it was already there)."""
        next_plan = wait_next(0.0)
        if next_plan is not None:
            return next_plan, 0.0
        start = time.perf_counter()
        deadline = start + self.max_wait_next_s
        while next_plan is None and not launched.ready() and time.perf_counter() < deadline:
            next_plan = wait_next(2e-4)
        return next_plan, time.perf_counter() - start

    def _collect(
        self, plan: StepPlan, scheduled: list[StepSeq], errors: list[SeqError], launched: DeviceTokens,
        pending: list[int | None] | None, table: SequenceTable,
    ) -> SampledTokens:
        """Reads a launched step's tokens and puts them where the sequential path would."""
        try:
            out = self.executor.collect(launched)
        except Exception as exc:  # noqa: BLE001 - the batch fails, the stream and the worker stay up
            self._fail(scheduled, errors, self._as_error(exc, plan), table)
            if table.ahead is not None:
                self._forget_failed(table.ahead, scheduled)
            return SampledTokens()
        refused: list[StepSeq] = []
        if pending is None:  # not advanced yet
            sampled = SampledTokens()
            rows = zip(out.token_ids, out.logprobs, strict=True)  # one per sampling row, in row order
            for seq in scheduled:
                token = next(rows) if seq.samples else None
                try:
                    table.advance(seq, None if token is None else token[0])
                except FlashStreamError as exc:
                    self._refused(seq, exc, errors, table)
                    refused.append(seq)
                    continue
                if token is not None:
                    sampled.append(seq.state.seq_id, *token)
        else:
            sampled = self._resolve(scheduled, pending, launched.seq_ids, out, errors, refused, table)
        if refused and table.ahead is not None:
            self._forget_failed(table.ahead, refused)
        return sampled

    def _resolve(
        self, scheduled: list[StepSeq], pending: list[int | None], seq_ids: Sequence[int], out: SamplerOutput,
        errors: list[SeqError], refused: list[StepSeq], table: SequenceTable,
    ) -> SampledTokens:
        """Puts the tokens of a launched step whose sequences were advanced with placeholders in place, all rows
        at once; a row whose grammar refuses its token is refused alone. seq_ids: the sequence of each sampling
        row, as launched."""
        seqs = [seq for seq in scheduled if seq.samples]  # the rows `pending` holds an index for
        where = [index for index in pending if index is not None]
        token_ids, logprobs = out.token_ids, out.logprobs
        refusals = table.resolve_launched(seqs, where, token_ids)
        for k, exc in refusals:
            self._refused(seqs[k], exc, errors, table)
            refused.append(seqs[k])
        if refusals:
            gone = {k for k, _ in refusals}
            kept = [k for k in range(len(seqs)) if k not in gone]
            return SampledTokens([seq_ids[k] for k in kept], [token_ids[k] for k in kept], [logprobs[k] for k in kept])
        return SampledTokens(list(seq_ids), token_ids, logprobs)

    def _draw_ahead(self, ahead: Ahead) -> None:
        """Queues the sampling of the step launched ahead when it was held back for this step's tokens (guided
        rows), now that they have advanced the matchers; the device runs that step's forward pass meanwhile."""
        if ahead.launched is None or ahead.launched.drawn:
            return
        try:
            ahead.launched.draw_now()
        except Exception as exc:  # noqa: BLE001 - reported as that plan's failure at its turn
            ahead.launched = None
            ahead.failure = self._as_error(exc, ahead.plan)

    @staticmethod
    def _forget_failed(ahead: Ahead, failed: list[StepSeq]) -> None:
        """The plan applied ahead saw sequences that its predecessor then failed: sequentially they would have
        been gone when it was applied, so they become unknown ids there (and its launch, fed by them, is void)."""
        gone = {id(seq.state) for seq in failed}
        kept = []
        for seq in ahead.scheduled:
            if id(seq.state) in gone:
                ahead.errors.append(SeqError(seq.state.seq_id, unknown_seq(seq.state.seq_id)))
            else:
                kept.append(seq)
        if len(kept) != len(ahead.scheduled):
            ahead.scheduled = kept
            ahead.launched = None

    @staticmethod
    def _as_error(exc: Exception, plan: StepPlan) -> FlashStreamError:
        if isinstance(exc, FlashStreamError):
            return exc
        log.exception("step %d failed", plan.step_id, exc_info=exc)
        return FlashStreamError(f"step failed: {type(exc).__name__}: {exc}")

    @staticmethod
    def _fail(
        scheduled: list[StepSeq], errors: list[SeqError], exc: FlashStreamError, table: SequenceTable
    ) -> None:
        for seq in scheduled:
            table.drop_state(seq.state)
            errors.append(SeqError(seq.state.seq_id, exc))

    def _within_budget(
        self, scheduled: list[StepSeq], errors: list[SeqError], table: SequenceTable
    ) -> list[StepSeq]:
        """Sequences past max_num_seqs or the token budget fail (the KV cache and graphs were sized for them)."""
        total = sum(seq.num_tokens for seq in scheduled)
        if len(scheduled) <= self.max_num_seqs and total <= self.max_num_batched_tokens:
            return scheduled
        kept: list[StepSeq] = []
        num_tokens = 0
        for seq in scheduled:
            if len(kept) < self.max_num_seqs and num_tokens + seq.num_tokens <= self.max_num_batched_tokens:
                kept.append(seq)
                num_tokens += seq.num_tokens
                continue
            table.drop(seq.state.seq_id)
            errors.append(SeqError(seq.state.seq_id, ResourceExhausted(
                f"seq {seq.state.seq_id}: step exceeds max_num_seqs {self.max_num_seqs} or "
                f"max_num_batched_tokens {self.max_num_batched_tokens}"
            )))
        return kept
