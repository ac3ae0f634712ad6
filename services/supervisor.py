"""What `flashstream up` does when one of its stages exits: a worker is restarted while others keep serving.

A worker that exits is started again after a delay that doubles with each restart (RESTART_DELAYS_S); one that
ran for STABLE_S before exiting starts the count over; one that has used up its restarts stays down while the
others serve. The stack stops when a stage other than a worker exits or when no worker is running any more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
STABLE_S = 60.0


@dataclass
class _Restarts:
    count: int = 0
    due: float | None = None  # when the pending restart starts the process; None: none pending
    started: float = 0.0  # when the running process was started
    given_up: bool = False  # used up its restarts: it stays down


class Supervisor:
    """Checks the stages of a running Stack; `check` restarts workers and says when the stack must stop."""

    def __init__(self, stack, say: Callable[[str], None] = print,  # noqa: ANN001 - services.launcher.Stack
                 clock: Callable[[], float] = time.monotonic,
                 delays: tuple[float, ...] = RESTART_DELAYS_S, stable_s: float = STABLE_S) -> None:
        self.stack = stack
        self.say = say
        self.clock = clock
        self.delays = delays
        self.stable_s = stable_s
        self._restarts = {s.name: _Restarts(started=clock()) for s in stack.stages if s.is_worker}

    def _running(self, stage) -> bool:  # noqa: ANN001
        return stage.proc is not None and stage.proc.poll() is None

    def check(self) -> str | None:
        """Restarts what is due; returns why the stack must stop, or None to keep serving."""
        now = self.clock()
        for stage in self.stack.stages:
            if self._running(stage):
                continue
            if not stage.is_worker:
                return f"{stage.name} exited with code {stage.proc.returncode}; stopping"
            restarts = self._restarts[stage.name]
            if restarts.given_up:
                continue
            if restarts.due is None:  # newly exited
                if not any(self._running(s) for s in self.stack.stages if s.is_worker):
                    return f"{stage.name} exited with code {stage.proc.returncode} and no worker is left; stopping"
                if now - restarts.started >= self.stable_s:
                    restarts.count = 0
                if restarts.count >= len(self.delays):
                    restarts.given_up = True
                    self.say(f"{stage.name} exited with code {stage.proc.returncode} after {restarts.count} restarts; "
                             "it stays down, the other workers keep serving")
                    continue
                delay = self.delays[restarts.count]
                restarts.due = now + delay
                restarts.count += 1
                self.say(f"{stage.name} exited with code {stage.proc.returncode}; the other workers keep serving; "
                         f"restarting it in {delay:g} s (restart {restarts.count} of {len(self.delays)})")
            elif now >= restarts.due:
                restarts.due, restarts.started = None, now
                self.stack.spawn(stage)
                self.say(f"{stage.name} restarted (pid {stage.proc.pid})")
        return None
