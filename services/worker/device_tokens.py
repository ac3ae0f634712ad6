"""Greedy tokens of a launched decode step, kept on the device so that the next step can start from them
before the host has read them.

A launch copies its argmax tokens into a slot of its own (a device buffer and a pinned host buffer) and
queues the device-to-host copy right behind the step, so reading them back later only waits for that step.
A slot stays owned by its launch until the tokens are read; the next step of the same sequences reads the
device buffer in stream order, before any later launch can reuse the slot.
"""

from __future__ import annotations

import torch


class TokenSlots:
    """Reusable (device, pinned host) int64 buffer pairs of `max_rows` entries."""

    def __init__(self, max_rows: int, device: torch.device) -> None:
        self.max_rows = max_rows
        self.device = device
        self._free: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def acquire(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._free:
            return self._free.pop()
        cuda = self.device.type == "cuda"
        dev = torch.zeros(self.max_rows, dtype=torch.int64, device=self.device)
        host = torch.zeros(self.max_rows, dtype=torch.int64, pin_memory=True) if cuda else None
        return dev, host

    def release(self, slot: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        self._free.append(slot)


class DeviceTokens:
    """The greedy token of each row of one launched step: `tokens` on the device, `token_ids()` on the host."""

    def __init__(self, slots: TokenSlots, argmax: torch.Tensor) -> None:
        """argmax: [n] int64 on the device, valid in stream order (it may be overwritten by a later launch)."""
        n = argmax.shape[0]
        if n > slots.max_rows:
            raise ValueError(f"{n} rows exceed the token slots' {slots.max_rows}")
        self._slots = slots
        self._slot: tuple[torch.Tensor, torch.Tensor | None] | None = slots.acquire()
        dev, host = self._slot
        self.tokens = dev[:n]  # [n] int64
        self.tokens.copy_(argmax)
        self._host = None if host is None else host[:n]
        self._event = None
        if self._host is not None:
            self._host.copy_(self.tokens, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        self._ids: list[int] | None = None

    def ready(self) -> bool:
        """Whether the step has finished on the device (reading its tokens would not wait)."""
        return self._event is None or self._event.query()

    def token_ids(self) -> list[int]:
        """The host's copy of the tokens: waits for the step, then frees the slot (read once)."""
        if self._ids is None:
            if self._event is not None:
                self._event.synchronize()
            self._ids = (self.tokens if self._host is None else self._host).tolist()
            if self._slot is not None:
                self._slots.release(self._slot)
                self._slot = None
        return self._ids
