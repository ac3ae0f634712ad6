"""Forward progress of one worker connection: a worker that has steps in flight but returns nothing for too long
is stalled (a stopped process, a hung device), which its open connection alone would not show for a long time.

The clock of a step starts when it is sent or, with another step still ahead of it, when that one's result
arrives (the worker runs steps in order). A step gets StallConfig.timeout_s, plus time for the prompt tokens it
holds; the first steps of a connection get first_steps_timeout_s, since they may compile kernels, unless the
worker process is warm already (it got past its first steps on an earlier connection: a stalled worker that
answered again).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from services.common.errors import Unavailable
from services.common.step import StepPlan
from services.scheduler.config import StallConfig

CHECK_INTERVAL_S = 0.2


class WorkerStalled(Unavailable):
    """A worker returned no step result within its allowance."""


def _prefill_tokens(plan: StepPlan) -> int:
    """Tokens of the step that are prompt chunks (rows of more than one token)."""
    new = (s.num_scheduled_tokens for s in plan.new_seqs)
    return sum(n for n in (*new, *plan.cached_seqs.num_scheduled_tokens) if n > 1)


class ProgressWatch:
    """Sent steps and returned results of one connection; `watch` raises WorkerStalled when progress stops."""

    def __init__(self, config: StallConfig, clock: Callable[[], float] = time.monotonic, warm: bool = False) -> None:
        self.config = config
        self.clock = clock
        self.warm = warm  # no compile allowance for the first steps
        self._allowances: deque[float] = deque()  # seconds each in-flight step may take, oldest first
        self._started = clock()  # when the oldest in-flight step started running
        self._num_results = 0

    @property
    def past_first_steps(self) -> bool:
        """Whether the worker has returned its first steps (it compiled what they needed)."""
        return self.warm or self._num_results >= self.config.first_steps

    def sent(self, plan: StepPlan) -> None:
        if not self._allowances:
            self._started = self.clock()
        first = not self.warm and self._num_results + len(self._allowances) < self.config.first_steps
        allowance = self.config.timeout_s + _prefill_tokens(plan) * self.config.per_prefill_token_s
        self._allowances.append(max(allowance, self.config.first_steps_timeout_s) if first else allowance)

    def returned(self) -> None:
        if self._allowances:
            self._allowances.popleft()
        self._num_results += 1
        self._started = self.clock()

    def stalled_for(self) -> float | None:
        """Seconds past its allowance the oldest in-flight step is; None when it is not overdue."""
        if not self._allowances:
            return None
        late = self.clock() - self._started - self._allowances[0]
        return late if late > 0 else None

    async def watch(self, address: str) -> None:
        """Returns never; raises WorkerStalled once the oldest in-flight step is overdue."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            if self.stalled_for() is not None:
                waited = self.clock() - self._started
                raise WorkerStalled(f"worker {address} returned no step result for {waited:.1f} s")
