"""What runs a step's sequences (a StepExecutor): the model (ModelRunner, in model_runner.py: run and sampled while
the host waits, or queued on the device with its sampled tokens left there for the next step) or, with no model, a
fixed token (FakeExecutor); and which sequences the model may sample on the device or by the graph's argmax."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from services.worker.device_tokens import DeviceTokens
from services.worker.sampler import TokenLogprobs
from services.worker.sampling.types import SamplerOutput
from services.worker.sequences import SeqState, StepSeq

Sampled = tuple[int, TokenLogprobs | None]


class StepExecutor(Protocol):
    def run(self, scheduled: Sequence[StepSeq]) -> list[Sampled | None]:
        """One entry per scheduled sequence: its sampled token, or None when its step does not sample."""

    def can_launch(self, scheduled: Sequence[StepSeq]) -> bool:
        """Whether `launch` can queue this step on the device, leaving its tokens there."""

    def launch(self, scheduled: Sequence[StepSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
        """Queues the step; prev: the launched step whose tokens are its inputs, row for row."""

    def collect(self, launched: DeviceTokens) -> SamplerOutput:
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


class FakeLaunch:
    """A step queued on FakeExecutor's simulated device: done at `ready_at` (time.monotonic)."""

    drawn = True  # its sampling is never held back

    def __init__(self, seq_ids: Sequence[int], ready_at: float) -> None:
        self.seq_ids = seq_ids
        self.ready_at = ready_at

    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at


class FakeExecutor:
    """No model: every sequence that samples gets `token_id`. With step_s > 0 a simulated device takes step_s per
    step, steps queued on it running back to back, so the overlapped path runs as on a GPU (for pipeline
    benchmarks: what the host adds to a device of known speed); with 0, every step is done at once and takes the
    sequential path."""

    def __init__(self, token_id: int, step_s: float = 0.0) -> None:
        self.token_id = token_id
        self.step_s = step_s
        self._free_at = 0.0  # when the simulated device finishes what is queued on it

    def run(self, scheduled: Sequence[StepSeq]) -> list[Sampled | None]:
        if self.step_s:
            self._wait_until(self._queue())
        return [(self.token_id, None) if seq.samples else None for seq in scheduled]

    def can_launch(self, scheduled: Sequence[StepSeq]) -> bool:
        return self.step_s > 0 and bool(scheduled)

    def launch(self, scheduled: Sequence[StepSeq], prev: DeviceTokens | None = None) -> FakeLaunch:
        if not self.step_s:
            raise ValueError("fake mode without a step time has no device to queue a step on")
        return FakeLaunch([seq.state.seq_id for seq in scheduled if seq.samples], self._queue())

    def collect(self, launched: FakeLaunch) -> SamplerOutput:
        self._wait_until(launched.ready_at)
        n = len(launched.seq_ids)
        return SamplerOutput([self.token_id] * n, [None] * n)

    def _queue(self) -> float:
        """Queues one step on the simulated device; returns when it will be done."""
        self._free_at = max(time.monotonic(), self._free_at) + self.step_s
        return self._free_at

    @staticmethod
    def _wait_until(t: float) -> None:
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def take_device_idle_s(self) -> float:
        return 0.0

    def waited_for_work(self) -> None:
        pass
