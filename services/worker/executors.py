"""What runs a step's sequences: the model (run and sampled while the host waits, or queued on the device with
its sampled tokens left there for the next step) or, with no model, a fixed token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.worker.device_tokens import DeviceTokens
from services.worker.sampler import Sampler, SamplingRow, TokenLogprobs
from services.worker.sampling.results import DeviceSample
from services.worker.sequences import PENDING_TOKEN, ScheduledSeq, SeqState
from services.worker.token_view import TokenView

Sampled = tuple[int, TokenLogprobs | None]


class StepExecutor(Protocol):
    def run(self, scheduled: Sequence[ScheduledSeq]) -> list[Sampled | None]:
        """One entry per scheduled sequence: its sampled token, or None when its step does not sample."""

    def can_launch(self, scheduled: Sequence[ScheduledSeq]) -> bool:
        """Whether `launch` can queue this step on the device, leaving its tokens there."""

    def launch(self, scheduled: Sequence[ScheduledSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
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
    `ModelExecutor.launch`.)"""
    p = state.sampling
    return p.repetition_penalty == 1.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0


def plain_greedy(state: SeqState) -> bool:
    """Whether the sampler's answer for this sequence's next token is the argmax of its raw logits: greedy, no
    penalties, no logprobs, no grammar and no min_tokens masking (conservatively: whenever min_tokens is not yet
    reached). A guided sequence never is: the sampler masks its logits."""
    p = state.sampling
    return (
        state.grammar is None
        and p.is_greedy
        and p.logprobs is None
        and not p.logit_bias
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

    def take_device_idle_s(self) -> float:
        return self.model_runner.gaps.take_idle_s()

    def waited_for_work(self) -> None:
        self.model_runner.gaps.forget_last_step()

    def run(self, scheduled: Sequence[ScheduledSeq]) -> list[Sampled | None]:
        gaps = self.model_runner.gaps
        gaps.step_started()
        try:
            return self._run(scheduled)
        finally:
            gaps.step_ended()

    def _run(self, scheduled: Sequence[ScheduledSeq]) -> list[Sampled | None]:
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
        out = self.sampler(logits, self._rows(scheduled, sample_rows))
        for j, i in enumerate(sample_rows):
            results[i] = (out.token_ids[j], out.logprobs[j])
        return results


    def can_launch(self, scheduled: Sequence[ScheduledSeq]) -> bool:
        """Whether the step can be queued on the device with its sampled tokens left there: every sampling row's
        token depends only on its logits, its parameters and how many tokens it has generated (see
        `device_samplable`). Prefill chunks, new sequences and rows that sample nothing always qualify."""
        return bool(scheduled) and all(device_samplable(seq.state) for seq in scheduled if seq.samples)

    def launch(self, scheduled: Sequence[ScheduledSeq], prev: DeviceTokens | None = None) -> DeviceTokens:
        """Queues a step that `can_launch` and its sampling, without waiting for either. A row whose last input
        token is still PENDING_TOKEN takes the token `prev` (the step queued just before) sampled for it. When
        such a row is guided, its mask needs that token on the host first: the sampling is then held back, and the
        caller queues it with `DeviceTokens.draw_now` once the token has advanced the row's matcher."""
        gaps = self.model_runner.gaps
        gaps.step_started()
        try:
            return self._launch(scheduled, prev)
        finally:
            gaps.step_ended()

    def _launch(self, scheduled: Sequence[ScheduledSeq], prev: DeviceTokens | None) -> DeviceTokens:
        token_ids: list[int] = []
        positions: list[int] = []
        prev_rows: list[int] = []
        guided_pending = False  # a guided row's matcher still lacks its input token
        for seq in scheduled:
            tokens = seq.token_ids
            if tokens and tokens[-1] == PENDING_TOKEN:
                if prev is None:
                    raise ValueError(f"seq {seq.state.seq_id}: its input token is pending but no step precedes it")
                positions.append(len(token_ids) + len(tokens) - 1)
                prev_rows.append(prev.row_of(seq.state.seq_id))
                tokens = [*tokens[:-1], 0]
                guided_pending = guided_pending or seq.state.grammar is not None
            token_ids.extend(tokens)
        runner = self.model_runner
        fill = None
        if positions:
            source = prev.tokens  # [rows of prev] int64
            if prev_rows != list(range(source.shape[0])):
                source = source.index_select(0, runner.device_index(prev_rows))
            fill = (runner.device_index(positions), source)
        chunks = [seq.chunk() for seq in scheduled]
        sample_rows = [i for i, seq in enumerate(scheduled) if seq.samples]
        seq_ids = [scheduled[i].state.seq_id for i in sample_rows]
        if not sample_rows:
            runner.forward(token_ids, chunks, sample_rows, fill)
            return DeviceTokens(None, seq_ids)
        if runner.graphed(chunks) and all(plain_greedy(seq.state) for seq in scheduled):
            # Every row samples and takes the argmax the graph computed; cloned before the next replay reuses it.
            tokens = runner.graph_argmax(token_ids, chunks, fill).clone()
            return DeviceTokens(DeviceSample.pack(tokens, None, None, (), ()), seq_ids)
        logits = runner.forward(token_ids, chunks, sample_rows, fill)  # [len(sample_rows), vocab]
        rows = self._rows(scheduled, sample_rows)
        if guided_pending:
            # Nothing runs on the device between this forward pass and the held-back sampling (graphed logits
            # stay valid): the runner draws before it queues another step.
            def draw() -> DeviceSample:
                batch = self.sampler.prepare(logits, rows)  # fills the masks
                runner.gaps.step_started()  # from the forward pass's end to here, the device waited for the masks
                sample = self.sampler.sample_prepared(logits, batch)
                runner.gaps.step_ended()
                return sample

            return DeviceTokens(None, seq_ids, draw=draw)
        # The guided rows' masks are filled on the host while the device runs the forward pass queued above.
        return DeviceTokens(self.sampler.sample(logits, rows), seq_ids)

    @staticmethod
    def collect(launched: DeviceTokens) -> list[Sampled]:
        """The launched step's sampled tokens on the host, one per sampling row (waits for the step)."""
        out = launched.outputs()
        return list(zip(out.token_ids, out.logprobs, strict=True))

    @staticmethod
    def _rows(scheduled: Sequence[ScheduledSeq], sample_rows: Sequence[int]) -> list[SamplingRow]:
        rows = []
        for i in sample_rows:
            state = scheduled[i].state
            rows.append(SamplingRow(
                state.sampling,
                TokenView(state.token_ids, 0, state.num_prompt_tokens),
                TokenView(state.token_ids, state.num_prompt_tokens),
                state.grammar,
            ))
        return rows


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

    def collect(self, launched: DeviceTokens) -> list[Sampled]:
        raise ValueError("fake mode has no device to queue a step on")

    def take_device_idle_s(self) -> float:
        return 0.0

    def waited_for_work(self) -> None:
        pass
