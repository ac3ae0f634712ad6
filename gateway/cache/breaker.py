"""A circuit breaker: after `threshold` consecutive failures calls are skipped for `cooldown_s`, then one
trial call decides whether the breaker closes again or stays open for another cool-down."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1 or not cooldown_s > 0:
            raise ValueError("CircuitBreaker needs threshold >= 1 and cooldown_s > 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.num_failures = 0  # consecutive
        self.num_opened = 0  # times the breaker opened, for metrics and tests
        self._clock = clock
        self._open_until: float | None = None
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """Whether a call may go out now; past the cool-down exactly one trial call is let through."""
        if self._open_until is None:
            return True
        if self._trial_running or self._clock() < self._open_until:
            return False
        self._trial_running = True
        return True

    def record_success(self) -> None:
        self.num_failures = 0
        self._open_until = None
        self._trial_running = False

    def record_failure(self) -> None:
        self.num_failures += 1
        if self._trial_running or (self._open_until is None and self.num_failures >= self.threshold):
            if self._open_until is None:
                self.num_opened += 1
            self._open_until = self._clock() + self.cooldown_s
        self._trial_running = False
