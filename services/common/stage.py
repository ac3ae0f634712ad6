"""The run loop every stage process shares: serve until SIGTERM or SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

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
