"""The sampled tokens of a launched step, kept on the device so that the next step can start from them before
the host has read them.

A launch queues its step and then the device-to-host copy of what it sampled (into pinned memory), and records
an event behind that copy; reading the tokens later waits for that event only. The device tensor `tokens` feeds
the next step's inputs in stream order, so the next step may be queued before this one has finished.

A step with guided rows queued behind another one (its inputs that step's tokens, still on the device) is
launched in two parts: its forward pass at once, its sampling (`draw_now`) once the host has read the tokens
before and advanced the rows' matchers with them, while the device runs that forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from services.worker.sampling.results import DeviceSample
from services.worker.sampling.types import SamplerOutput


class DeviceTokens:
    """What one launched step samples: `tokens` on the device (one per sampling row), `outputs()` on the host."""

    def __init__(
        self, sample: DeviceSample | None, seq_ids: Sequence[int], draw: Callable[[], DeviceSample] | None = None
    ) -> None:
        """sample: the step's DeviceSample (None when no row samples); seq_ids: the sequence of each of its rows.
        draw: instead of sample, the step's sampling held back at launch (see `draw_now`)."""
        self.seq_ids = seq_ids  # the sequence of each row of `tokens`
        # Row by sequence, made when first asked: a decode that continues this step row for row never asks.
        self._rows: dict[int, int] | None = None
        self._draw = draw
        self.sample: DeviceSample | None = None
        self.tokens: torch.Tensor | None = None  # [num_sampling_rows] int64
        self._event: torch.cuda.Event | None = None
        self._host: torch.Tensor | None = None
        self._outputs: SamplerOutput | None = None
        if draw is None:
            self._attach(sample)

    @property
    def drawn(self) -> bool:
        """Whether the sampling is queued (false only between a held-back launch and `draw_now`)."""
        return self._draw is None

    def draw_now(self) -> None:
        """Queues the sampling held back at launch, once the host knows what it needs: the tokens of the step
        before, which advance the guided rows' matchers that fill their masks."""
        if self._draw is None:
            raise ValueError("this step's sampling is already queued")
        draw, self._draw = self._draw, None
        self._attach(draw())

    def _attach(self, sample: DeviceSample | None) -> None:
        """Takes the step's sample and queues the copy of its results to the host behind it."""
        self.sample = sample
        if sample is None:
            return
        self.tokens = sample.token_ids
        packed = sample.packed
        if packed.is_cuda:
            self._host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self._host.copy_(packed, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = packed

    def row_of(self, seq_id: int) -> int:
        """The row of `tokens` holding the token sampled for this sequence."""
        return self.rows_of((seq_id,))[0]

    def rows_of(self, seq_ids: Sequence[int]) -> list[int]:
        """The rows of `tokens` holding the tokens sampled for these sequences."""
        rows = self._rows
        if rows is None:
            rows = self._rows = dict(zip(self.seq_ids, range(len(self.seq_ids))))
        try:
            return [rows[seq_id] for seq_id in seq_ids]
        except KeyError as exc:
            raise ValueError(f"seq {exc.args[0]} sampled nothing in the launched step it is said to continue") from None

    def ready(self) -> bool:
        """Whether the step and its copy have finished on the device (reading would not wait)."""
        return self.drawn and (self._event is None or self._event.query())

    def outputs(self) -> SamplerOutput:
        """The sampled tokens (and logprobs) on the host: waits for the step the first time."""
        if self._outputs is None:
            if not self.drawn:
                raise ValueError("the step's sampling was held back and is not queued yet (draw_now)")
            if self.sample is None:
                self._outputs = SamplerOutput(token_ids=[], logprobs=[])
            else:
                if self._event is not None:
                    self._event.synchronize()
                self._outputs = self.sample.unpack(self._host.tolist())
        return self._outputs
