"""How long the device sat idle between consecutive steps, measured in stream order with CUDA events.

Each step records an event once the host has built its rows' inputs, right before it queues its first operation,
and one after its sampling; the gap from one step's end to the next step's start is time the device had nothing of
ours to run (the host was late: reading the step before's tokens, applying the plan, building the inputs). Queued
ahead, a step's start event follows its predecessor's end at once, so overlapped steps add no idle time. A step that
starts a busy period (the worker held no sequence before it) has no gap: the device waited for requests, not for
the host.
A step whose sampling is held back until the host has filled its guided rows' masks (see DeviceTokens) counts as
two parts, its forward pass and its sampling, so a wait for the masks between them is idle time too.
Pairs are read once both events have completed, never waiting for them.
"""

from __future__ import annotations

import torch


class DeviceGaps:
    """Start/end events of the steps on one device (inert on a CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda"
        self._last_end: torch.cuda.Event | None = None
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # (previous end, next start)

    def step_started(self) -> None:
        if not self.enabled:
            return
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        if self._last_end is not None:
            self._pending.append((self._last_end, start))

    def step_ended(self) -> None:
        if not self.enabled:
            return
        self._last_end = torch.cuda.Event(enable_timing=True)
        self._last_end.record()

    def forget_last_step(self) -> None:
        """The next step starts a busy period: no gap is measured before it."""
        self._last_end = None

    def take_idle_s(self) -> float:
        """Idle seconds of the gaps whose events have completed since the last call."""
        idle, waiting = 0.0, []
        for end, start in self._pending:
            if start.query():
                idle += max(0.0, end.elapsed_time(start)) / 1e3
            else:
                waiting.append((end, start))
        self._pending = waiting
        return idle
