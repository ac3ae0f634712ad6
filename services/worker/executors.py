"""What runs a step's sequences: the model (sampling on the host's terms, or a greedy decode step queued on
the device) or, with no model, a fixed token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.worker.device_tokens import DeviceTokens
from services.worker.sampler import Sampler, SamplingRow, TokenLogprobs
from services.worker.sequences import ScheduledSeq, SeqState
from services.worker.token_view import TokenView

Sampled = tuple[int, TokenLogprobs | None]


class StepExecutor(Protocol):
    def run(self, scheduled: Sequence[ScheduledSeq]) -> list[Sampled | None]:
        """One entry per scheduled sequence: its sampled token, or None when its step does not sample."""

    def can_launch(self, scheduled: Sequence[ScheduledSeq]) -> bool:
        """Whether `launch` can queue this step on the device, leaving its tokens there."""

    def launch(self, scheduled: Sequence[ScheduledSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
        """Queues the step; prev: the launched step whose tokens are its inputs, row for row."""

    def collect(self, launched: DeviceTokens) -> list[Sampled | None]:
        """Waits for a launched step and returns its tokens, as `run` would."""


def plain_greedy(state: SeqState) -> bool:
    """Whether the sampler's answer for this sequence's next token is the argmax of its raw logits: greedy, no
    penalties, no logprobs, no grammar and no min_tokens masking (conservatively: whenever min_tokens is not yet
    reached). A guided sequence never is: its mask needs the previous token on the host, so it runs sequentially."""
    p = state.sampling
    return (
        state.grammar is None
        and p.is_greedy
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
                state.grammar,
            ))
        out = self.sampler(logits, rows)
        for j, i in enumerate(sample_rows):
            results[i] = (out.token_ids[j], out.logprobs[j])
        return results


    def can_launch(self, scheduled: Sequence[ScheduledSeq]) -> bool:
        """Whether the step can be queued on the device with its tokens left there: a decode step (one token per
        sequence, each sampling) whose every row is plain greedy."""
        return bool(scheduled) and all(
            seq.num_tokens == 1 and seq.samples and plain_greedy(seq.state) for seq in scheduled
        )

    def launch(self, scheduled: Sequence[ScheduledSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
        """Queues a step that `can_launch`; prev: the launched step whose tokens are its inputs, row for row."""
        token_ids = [] if prev is not None else [seq.token_ids[0] for seq in scheduled]
        return self.model_runner.launch_greedy(token_ids, [seq.chunk() for seq in scheduled], prev)

    @staticmethod
    def collect(launched: DeviceTokens) -> list[Sampled | None]:
        return [(token_id, None) for token_id in launched.token_ids()]


class FakeExecutor:
    """No model: every sequence that samples gets `token_id` at once (for pipeline benchmarks)."""

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id

    def run(self, scheduled: Sequence[ScheduledSeq]) -> list[Sampled | None]:
        return [(self.token_id, None) if seq.samples else None for seq in scheduled]

    def can_launch(self, scheduled: Sequence[ScheduledSeq]) -> bool:
        return False  # nothing runs on a device: every step takes the sequential path

    def launch(self, scheduled: Sequence[ScheduledSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
        raise ValueError("fake mode has no device to queue a step on")

    def collect(self, launched: DeviceTokens) -> list[Sampled | None]:
        raise ValueError("fake mode has no device to queue a step on")
