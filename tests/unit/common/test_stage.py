"""serve_stage: the shared process loop (start, wait for a signal, drain, exit 0)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import pytest

from services.common.errors import InvalidArgument
from services.common.metrics import Metrics
from services.common.stage import serve_stage


class _Stage:
    def __init__(self, start_s: float = 0.0, fail: bool = False) -> None:
        self.metrics = Metrics("test")
        self.start_s = start_s
        self.fail = fail
        self.calls: list[str] = []

    def ready(self) -> bool:
        return "started" in self.calls

    async def start(self) -> None:
        self.calls.append("start")
        await asyncio.sleep(self.start_s)
        if self.fail:
            raise InvalidArgument("no such model folder: /nowhere")
        self.calls.append("started")

    async def stop(self, grace_s: float) -> None:
        self.calls.append(f"stop {grace_s:g}")


def _sigterm_after(delay_s: float) -> None:
    asyncio.get_running_loop().call_later(delay_s, os.kill, os.getpid(), signal.SIGTERM)


@pytest.mark.timeout(30)
def test_a_started_stage_drains_with_the_drain_timeout_on_sigterm_and_returns_zero() -> None:
    stage = _Stage()

    async def main() -> int:
        _sigterm_after(0.2)
        return await serve_stage(stage, "127.0.0.1", 0, 7.5, lambda: "up")

    assert asyncio.run(main()) == 0
    assert stage.calls == ["start", "started", "stop 7.5"]


@pytest.mark.timeout(30)
def test_a_started_stage_moves_its_start_up_objects_out_of_the_collectors_reach() -> None:
    stage = _Stage()
    seen: dict[str, bool] = {}

    async def main() -> int:
        def look() -> None:
            seen["calls collectable"] = any(o is stage.calls for o in gc.get_objects())
            os.kill(os.getpid(), signal.SIGTERM)

        asyncio.get_running_loop().call_later(0.2, look)
        return await serve_stage(stage, "127.0.0.1", 0, 1.0, lambda: "up")

    try:
        assert any(o is stage.calls for o in gc.get_objects())
        assert asyncio.run(main()) == 0
        assert seen == {"calls collectable": False}
    finally:
        gc.unfreeze()


@pytest.mark.timeout(30)
def test_sigterm_during_a_slow_start_stops_at_once() -> None:
    stage = _Stage(start_s=60.0)

    async def main() -> int:
        _sigterm_after(0.2)
        return await serve_stage(stage, "127.0.0.1", 0, 5.0, lambda: "up")

    assert asyncio.run(main()) == 0
    assert stage.calls == ["start", "stop 5"]


@pytest.mark.timeout(30)
def test_a_failed_start_stops_the_stage_and_raises_its_error() -> None:
    stage = _Stage(fail=True)
    with pytest.raises(InvalidArgument) as info:
        asyncio.run(serve_stage(stage, "127.0.0.1", 0, 5.0, lambda: "up"))
    assert info.value.message == "no such model folder: /nowhere"
    assert stage.calls == ["start", "stop 0"]
