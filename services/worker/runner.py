"""The worker's core: applies each StepPlan to the sequences' state, runs the step and returns what it sampled.

Plans are processed strictly in order (the caller serialises them); a sequence that samples gets the token
appended to its own state, so the next plan's decode runs it. A problem with one sequence (an unknown id, a
block out of range, tokens beyond max_model_len) becomes a SeqError for that sequence alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from services.common.errors import FlashStreamError, ResourceExhausted
from services.worker.plan import SeqError, SeqOutput, StepPlan, StepResult
from services.worker.sampler import Sampler, SamplingRow, TokenLogprobs
from services.worker.sequences import ScheduledSeq, SeqState, SequenceLimits, SequenceTable
from services.worker.token_view import TokenView

log = logging.getLogger(__name__)

Sampled = tuple[int, TokenLogprobs | None]


class StepExecutor(Protocol):
    def run(self, scheduled: Sequence[ScheduledSeq]) -> list[Sampled | None]:
        """One entry per scheduled sequence: its sampled token, or None when its step does not sample."""


def plain_greedy(state: SeqState) -> bool:
    """Whether the sampler's answer for this sequence's next token is the argmax of its raw logits: greedy, no
    penalties, no logprobs and no min_tokens masking (conservatively: whenever min_tokens is not yet reached)."""
    p = state.sampling
    return (
        p.is_greedy
        and p.logprobs is None
        and p.repetition_penalty == 1.0
        and p.presence_penalty == 0.0
        and p.frequency_penalty == 0.0
        and len(state.token_ids) - state.num_prompt_tokens >= p.min_tokens
    )


class ModelExecutor:
    """Runs the model on a step's chunks and samples the rows that reach the end of their tokens."""

    def __init__(self, model_runner, sampler: Sampler) -> None:  # noqa: ANN001 - ModelRunner (imports torch)
        self.model_runner = model_runner
        self.sampler = sampler

    def run(self, scheduled: Sequence[ScheduledSeq]) -> list[Sampled | None]:
        token_ids = [t for seq in scheduled for t in seq.token_ids]
        chunks = [seq.chunk() for seq in scheduled]
        sample_rows = [i for i, seq in enumerate(scheduled) if seq.samples]
        results: list[Sampled | None] = [None] * len(scheduled)
        if sample_rows and self.model_runner.graphed(chunks) and all(plain_greedy(seq.state) for seq in scheduled):
            # The graph took every row's argmax: the sampler would answer the same, so it is skipped.
            token_ids = self.model_runner.greedy_decode(token_ids, chunks)
            for i in sample_rows:
                results[i] = (token_ids[i], None)
            return results
        if not sample_rows:
            self.model_runner.forward(token_ids, chunks, sample_rows)
            return results
        logits = self.model_runner.forward(token_ids, chunks, sample_rows)  # [len(sample_rows), vocab]
        rows = []
        for i in sample_rows:
            state = scheduled[i].state
            rows.append(SamplingRow(
                state.sampling,
                TokenView(state.token_ids, 0, state.num_prompt_tokens),
                TokenView(state.token_ids, state.num_prompt_tokens),
            ))
        out = self.sampler(logits, rows)
        for j, i in enumerate(sample_rows):
            results[i] = (out.token_ids[j], out.logprobs[j])
        return results


class FakeExecutor:
    """No model: every sequence that samples gets `token_id` at once (for pipeline benchmarks)."""

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id

    def run(self, scheduled: Sequence[ScheduledSeq]) -> list[Sampled | None]:
        return [(self.token_id, None) if seq.samples else None for seq in scheduled]


class Runner:
    """Plan in, result out; one SequenceTable per Step stream (a default one for in-process use)."""

    def __init__(
        self, executor: StepExecutor, limits: SequenceLimits, max_num_seqs: int, max_num_batched_tokens: int
    ) -> None:
        self.executor = executor
        self.limits = limits
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.table = self.new_table()

    def new_table(self) -> SequenceTable:
        return SequenceTable(self.limits)

    def step(self, plan: StepPlan, table: SequenceTable | None = None) -> StepResult:
        start = time.perf_counter()
        table = self.table if table is None else table
        scheduled, errors = table.apply(plan)
        scheduled = self._within_budget(scheduled, errors, table)
        outputs: list[SeqOutput] = []
        if scheduled:
            try:
                sampled = self.executor.run(scheduled)
            except Exception as exc:  # noqa: BLE001 - the batch fails, the stream and the worker stay up
                if not isinstance(exc, FlashStreamError):
                    log.exception("step %d failed", plan.step_id)
                    exc = FlashStreamError(f"step failed: {type(exc).__name__}: {exc}")
                for seq in scheduled:
                    table.drop(seq.state.seq_id)
                    errors.append(SeqError(seq.state.seq_id, exc))
            else:
                for seq, result in zip(scheduled, sampled, strict=True):
                    table.advance(seq, None if result is None else result[0])
                    if result is not None:
                        outputs.append(SeqOutput(seq.state.seq_id, result[0], result[1]))
        return StepResult(plan.step_id, outputs, errors, time.perf_counter() - start)

    def _within_budget(
        self, scheduled: list[ScheduledSeq], errors: list[SeqError], table: SequenceTable
    ) -> list[ScheduledSeq]:
        """Sequences past max_num_seqs or the token budget fail (the KV cache and graphs were sized for them)."""
        kept: list[ScheduledSeq] = []
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
