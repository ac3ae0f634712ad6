"""What runs a step's sequences (a StepExecutor): the model (ModelRunner, in model_runner.py: run and sampled while
the host waits, or queued on the device with its sampled tokens left there for the next step) or, with no model, a
fixed token (FakeExecutor); and which sequences the model may sample on the device or by the graph's argmax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.worker.device_tokens import DeviceTokens
from services.worker.sampler import TokenLogprobs
from services.worker.sequences import SeqState, StepSeq

Sampled = tuple[int, TokenLogprobs | None]


class StepExecutor(Protocol):
    def run(self, scheduled: Sequence[StepSeq]) -> list[Sampled | None]:
        """One entry per scheduled sequence: its sampled token, or None when its step does not sample."""

    def can_launch(self, scheduled: Sequence[StepSeq]) -> bool:
        """Whether `launch` can queue this step on the device, leaving its tokens there."""

    def launch(self, scheduled: Sequence[StepSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
        """Queues the step; prev: the launched step whose tokens are its inputs, row for row."""

    def collect(self, launched: DeviceTokens) -> list[Sampled]:
        """Waits for a launched step and returns the token of each of its sampling rows, in row order."""

    def take_device_idle_s(self) -> float:
        """Seconds the device sat idle between steps, measured since the last call (0 where not measured)."""

    def waited_for_work(self) -> None:
        """The step about to run is the first since the worker last held no sequence: the device waited for work,
        not for the host, so the gap before it is not idle time."""


def device_samplable(state: SeqState) -> bool:
    """Whether the sampler can draw this sequence's next token before the host knows its previous one: true unless
    a repetition, presence or frequency penalty reads the generated tokens themselves. (A grammar's mask needs its
    matcher advanced by the previous token too, but only the sampling waits for that, not the forward pass: see
    `ModelRunner.launch`.)"""
    return not state.sampling_row.penalised


def plain_greedy(state: SeqState) -> bool:
    """Whether the sampler's answer for this sequence's next token is the argmax of its raw logits: greedy, no
    penalties, no logprobs, no grammar and no min_tokens masking (conservatively: whenever min_tokens is not yet
    reached). A guided sequence never is: the sampler masks its logits."""
    row = state.sampling_row
    if row.plain:  # no grammar, no min_tokens and nothing else: its temperature decides
        return row.greedy
    p = state.sampling
    return (
        state.grammar is None
        and p.is_greedy
        and p.logprobs is None
        and not p.logit_bias
        and not row.penalised
        and len(state.token_ids) - state.num_prompt_tokens >= p.min_tokens
    )


class FakeExecutor:
    """No model: every sequence that samples gets `token_id` at once (for pipeline benchmarks)."""

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id

    def run(self, scheduled: Sequence[StepSeq]) -> list[Sampled | None]:
        return [(self.token_id, None) if seq.samples else None for seq in scheduled]

    def can_launch(self, scheduled: Sequence[StepSeq]) -> bool:
        return False  # nothing runs on a device: every step takes the sequential path

    def launch(self, scheduled: Sequence[StepSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
        raise ValueError("fake mode has no device to queue a step on")

    def collect(self, launched: DeviceTokens) -> list[Sampled]:
        raise ValueError("fake mode has no device to queue a step on")

    def take_device_idle_s(self) -> float:
        return 0.0

    def waited_for_work(self) -> None:
        pass
