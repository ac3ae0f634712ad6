"""The sampled tokens of a launched step, kept on the device so that the next step can start from them before
the host has read them.

A launch queues its step and then the device-to-host copy of what it sampled (into pinned memory), and records
an event behind that copy; reading the tokens later waits for that event only. The device tensor `tokens` feeds
the next step's inputs in stream order, so the next step may be queued before this one has finished.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from services.worker.sampling.results import DeviceSample
from services.worker.sampling.types import SamplerOutput


class DeviceTokens:
    """What one launched step samples: `tokens` on the device (one per sampling row), `outputs()` on the host."""

    def __init__(self, sample: DeviceSample | None, seq_ids: Sequence[int]) -> None:
        """sample: the step's DeviceSample (None when no row samples); seq_ids: the sequence of each of its rows."""
        self.sample = sample
        self.tokens = sample.token_ids if sample is not None else None  # [num_sampling_rows] int64
        self._rows = {seq_id: row for row, seq_id in enumerate(seq_ids)}
        self._event: torch.cuda.Event | None = None
        self._host: torch.Tensor | None = None
        self._outputs: SamplerOutput | None = None
        if sample is not None:
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
        row = self._rows.get(seq_id)
        if row is None:
            raise ValueError(f"seq {seq_id} sampled nothing in the launched step it is said to continue")
        return row

    def ready(self) -> bool:
        """Whether the step and its copy have finished on the device (reading would not wait)."""
        return self._event is None or self._event.query()

    def outputs(self) -> SamplerOutput:
        """The sampled tokens (and logprobs) on the host: waits for the step the first time."""
        if self._outputs is None:
            if self.sample is None:
                self._outputs = SamplerOutput(token_ids=[], logprobs=[])
            else:
                if self._event is not None:
                    self._event.synchronize()
                self._outputs = self.sample.unpack(self._host.tolist())
        return self._outputs
