"""The supervisor of `flashstream up`: restarts a dead worker with growing delays while others serve."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.launcher import ChildStage
from services.supervisor import Supervisor
from tests.manual_clock import ManualClock


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class FakeStack:
    stages: list[ChildStage] = field(default_factory=list)
    spawned: list[str] = field(default_factory=list)

    def spawn(self, stage: ChildStage) -> None:
        self.spawned.append(stage.name)
        stage.proc = FakeProc(100 + len(self.spawned))


def _stack() -> FakeStack:
    stages = [ChildStage("worker0", ["worker"], "a"), ChildStage("worker1", ["worker"], "b"),
              ChildStage("scheduler", ["scheduler"], "c")]
    for i, stage in enumerate(stages):
        stage.proc = FakeProc(i)
    return FakeStack(stages)


def test_a_dead_worker_is_restarted_after_growing_delays_and_the_stack_keeps_serving():
    stack, clock, lines = _stack(), ManualClock(), []
    supervisor = Supervisor(stack, lines.append, clock, delays=(1.0, 2.0), stable_s=60.0)
    stack.stages[1].proc.returncode = -9
    assert supervisor.check() is None
    assert lines == ["worker1 exited with code -9; the other workers keep serving; restarting it in 1 s "
                     "(restart 1 of 2)"]
    clock.now = 0.9
    assert supervisor.check() is None and stack.spawned == []
    clock.now = 1.0
    assert supervisor.check() is None and stack.spawned == ["worker1"]
    assert lines[-1] == "worker1 restarted (pid 101)"
    stack.stages[1].proc.returncode = 1  # dies again at once: the next delay is longer
    clock.now = 2.0
    assert supervisor.check() is None
    assert lines[-1].endswith("restarting it in 2 s (restart 2 of 2)")
    clock.now = 4.0
    supervisor.check()
    stack.stages[1].proc.returncode = 1
    clock.now = 5.0
    assert supervisor.check() is None
    assert lines[-1] == "worker1 exited with code 1 after 2 restarts; it stays down, the other workers keep serving"


def test_a_worker_out_of_restarts_stays_down_and_the_stack_stops_when_the_last_worker_exits():
    stack, clock, lines = _stack(), ManualClock(), []
    supervisor = Supervisor(stack, lines.append, clock, delays=(1.0,), stable_s=60.0)
    stack.stages[1].proc.returncode = 1
    supervisor.check()
    clock.now = 1.0
    supervisor.check()
    stack.stages[1].proc.returncode = 1
    clock.now = 2.0
    assert supervisor.check() is None
    clock.now = 100.0
    assert supervisor.check() is None  # it is not restarted, nor said again
    assert (stack.spawned, len(lines)) == (["worker1"], 3)
    stack.stages[0].proc.returncode = -9
    assert supervisor.check() == "worker0 exited with code -9 and no worker is left; stopping"


def test_a_worker_that_ran_a_while_starts_its_restart_count_over():
    stack, clock, lines = _stack(), ManualClock(), []
    supervisor = Supervisor(stack, lines.append, clock, delays=(1.0, 2.0), stable_s=60.0)
    stack.stages[0].proc.returncode = 1
    supervisor.check()
    clock.now = 1.0
    supervisor.check()
    clock.now = 100.0
    stack.stages[0].proc.returncode = 1
    assert supervisor.check() is None
    assert lines[-1].endswith("restarting it in 1 s (restart 1 of 2)")


def test_the_stack_stops_when_no_worker_is_left_or_another_stage_exits():
    stack, clock = _stack(), ManualClock()
    supervisor = Supervisor(stack, lambda _: None, clock)
    stack.stages[0].proc.returncode = 1
    stack.stages[1].proc.returncode = 1
    assert supervisor.check() == "worker0 exited with code 1 and no worker is left; stopping"
    stack = _stack()
    stack.stages[2].proc.returncode = 2
    assert Supervisor(stack, lambda _: None, clock).check() == "scheduler exited with code 2; stopping"
