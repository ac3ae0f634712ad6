"""The run loop every stage process shares: serve until SIGTERM or SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from services.common.config import env_default
from services.common.errors import InvalidArgument
from services.common.grpc_server import install_stop_signals
from services.common.metrics import Metrics, start_status_server

log = logging.getLogger(__name__)


class Stage(Protocol):
    """What a stage object offers its process: start, readiness, metrics and a draining stop."""

    metrics: Metrics

    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self, grace_s: float) -> None: ...


async def serve_stage(stage: Stage, host: str, status_port: int, drain_timeout_s: float,
                      describe: Callable[[], str]) -> int:
    """Runs `stage` until a stop signal, then drains it within drain_timeout_s; returns the exit code 0.

    The status routes (/metrics, /health, /ready) come up first, so a slow start (a worker loading its
    model) already answers /health; a signal during start stops at once. An exception from start() is
    raised after everything started is stopped. status_port 0 serves no status routes (the gateway has
    them on its own HTTP port). describe() gives the line logged once the stage has started.
    """
    status = await start_status_server(host, status_port, stage.metrics, stage.ready)
    stop = asyncio.Event()
    install_stop_signals(stop)
    start = asyncio.create_task(stage.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([start, stopping], return_when=asyncio.FIRST_COMPLETED)
        if start.done() and start.exception() is not None:
            await stage.stop(0)
            raise start.exception()  # type: ignore[misc]
        if start.done():
            log.info("%s", describe())
            await stopping
        else:
            start.cancel()
        log.info("draining (up to %.1f s)", drain_timeout_s)
        await stage.stop(drain_timeout_s)
        return 0
    finally:
        stopping.cancel()
        await status.cleanup()


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Runs a stage's main coroutine on asyncio's event loop, or on uvloop with FLASHSTREAM_EVENT_LOOP=uvloop (where
    it is installed; it serves the same stack, and a stage spends much of its time in the loop itself)."""
    choice = env_default("event_loop", "asyncio")
    if choice not in ("asyncio", "uvloop"):
        raise InvalidArgument(f"FLASHSTREAM_EVENT_LOOP must be asyncio or uvloop, got {choice!r}")
    factory = None
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise InvalidArgument("FLASHSTREAM_EVENT_LOOP=uvloop, but uvloop is not installed") from None
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
