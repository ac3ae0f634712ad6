"""One StepPlan drives every rank: rank 0's Runner serves the Step streams and hands each step, as it is about to
run it, to the other ranks, whose Runners run the same step on their share of the model.

Every rank holds a copy of each stream's SequenceTable and makes the same decisions from it, so the ranks call
their models in the same order with the same inputs and meet at the same collectives. Timing must not steer a
rank's path, so the leader takes the next plan (for the overlapped path) as it stands when a step starts, and
never waits for it mid-step; with the scheduler's two plans in flight the next one is usually there already.
Every rank samples the same all-gathered logits, so every rank's tables stay equal to the leader's.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections import deque
from dataclasses import dataclass

from services.common.step import StepPlan, StepResult
from services.worker.parallel.group import TensorParallelGroup
from services.worker.runner import PlanSource, Runner, StepShape
from services.worker.sequences import SequenceTable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RankCommand:
    """What rank 0 tells the other ranks before each step (or when it stops)."""

    closed_tables: tuple[int, ...]  # tables of Step streams that ended since the last command: drop them
    table_id: int = -1  # the stream whose step this is
    plan: StepPlan | None = None  # None: the plan each rank applied ahead on this table, the last command's next
    next_plan: StepPlan | None = None  # the plan the leader may apply and launch ahead (see Runner.step)
    stop: bool = False  # the worker shuts down: leave the loop


class LeaderRunner:
    """Rank 0's Runner: what the servicer steps; each step is sent to the other ranks before it runs here."""

    def __init__(self, runner: Runner, tp: TensorParallelGroup) -> None:
        self.runner = runner
        self.tp = tp
        self._table_ids: dict[int, int] = {}  # id(table) → the number the ranks know it by, while it lives
        self._numbers = itertools.count(1)  # 0: the runner's default table
        self._closed: deque[int] = deque()  # tables collected since the last command (appended by finalizers)

    @property
    def last_shape(self) -> StepShape:
        return self.runner.last_shape

    def take_device_idle_s(self) -> float:
        return self.runner.take_device_idle_s()

    def new_table(self) -> SequenceTable:
        table = self.runner.new_table()
        number = next(self._numbers)
        self._table_ids[id(table)] = number
        weakref.finalize(table, self._forget, id(table), number)
        return table

    def _forget(self, key: int, number: int) -> None:
        self._table_ids.pop(key, None)
        self._closed.append(number)

    def step(self, plan: StepPlan, table: SequenceTable | None = None, next_plan: StepPlan | None = None,
             wait_next: PlanSource | None = None) -> StepResult:
        """As Runner.step, but `wait_next` is asked once, without waiting, before the step starts."""
        table = self.runner.table if table is None else table
        if next_plan is None and wait_next is not None and self.runner.overlap:
            next_plan = wait_next(0.0)
        # A plan applied ahead is known by its object: the other ranks take their own copy of it.
        sent = None if table.ahead is not None and table.ahead.plan is plan else plan
        self.tp.broadcast_object(RankCommand(self._take_closed(), self._table_ids.get(id(table), 0), sent, next_plan))
        return self.runner.step(plan, table, next_plan)

    def stop(self) -> None:
        """Ends every other rank's loop (call on the thread that steps)."""
        self.tp.broadcast_object(RankCommand(self._take_closed(), stop=True))

    def _take_closed(self) -> tuple[int, ...]:
        closed = []
        while self._closed:
            closed.append(self._closed.popleft())
        return tuple(closed)


def follow(runner: Runner, tp: TensorParallelGroup) -> None:
    """A rank other than 0: runs every step rank 0 sends, until it says stop."""
    tables: dict[int, SequenceTable] = {0: runner.table}
    while True:
        command: RankCommand = tp.broadcast_object(None)
        for number in command.closed_tables:
            tables.pop(number, None)
        if command.stop:
            return
        table = tables.get(command.table_id)
        if table is None:
            table = tables[command.table_id] = runner.new_table()
        plan = command.plan if command.plan is not None else table.ahead.plan
        try:
            runner.step(plan, table, command.next_plan)
        except Exception:  # noqa: BLE001 - rank 0 met the same error and reports it; the ranks stay in step
            log.exception("step %d failed on this rank as on rank 0", plan.step_id)
