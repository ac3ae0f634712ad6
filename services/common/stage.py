"""The run loop every stage process shares: serve until SIGTERM or SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from aiohttp import web

from services.common.grpc_server import install_stop_signals
from services.common.metrics import Metrics, start_status_server

log = logging.getLogger(__name__)


# Beyond its drain limit, a stage's stop may take this long to close its streams and servers, and the process
# this much more to wind down (tasks, executor threads, channels): it has exited within limit + 2 s.
STOP_MARGIN_S = 1.0
EXIT_MARGIN_S = 0.75


def exit_within(seconds: float) -> None:
    """Ends the process with code 0 after `seconds` unless it has exited by itself: a thread stuck in a library
    call (an encode, a device step, a channel's teardown) must not keep a stopped stage alive."""

    def force_exit() -> None:
        log.warning("the process did not exit %.2f s after stopping; exiting now", seconds)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(seconds, force_exit)
    timer.daemon = True
    timer.start()


# Set by `flashstream up` in each stage's environment: the launcher's pid, whose death ends the stage.
LAUNCHER_PID_VARIABLE = "FLASHSTREAM_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1


def die_with_launcher() -> bool:
    """For a stage that `flashstream up` started: asks the kernel for SIGTERM when the launcher dies; False when
    the launcher is gone already. The stage asks for itself rather than the launcher between fork and exec: Python
    code there (subprocess's preexec_fn) makes subprocess fork instead of vfork, and gRPC's fork handlers then abort
    some of the children of a launcher busy with gRPC calls before they exec."""
    launcher = os.environ.get(LAUNCHER_PID_VARIABLE)
    if not launcher or not sys.platform.startswith("linux"):
        return True  # not Linux: the launcher's own handlers still stop its stages
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    return os.getppid() == int(launcher)  # checked after asking: the launcher may have died before


def run_stage_process(main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run(main) for a stage's process: once main returns (the stage stopped), the process exits within
    EXIT_MARGIN_S whatever is left running. A stage whose launcher is gone does not start."""
    if not die_with_launcher():
        main.close()
        log.warning("the launcher that started this stage has exited; not starting")
        return 0

    async def guarded() -> int:
        try:
            return await main
        finally:
            exit_within(EXIT_MARGIN_S)

    return asyncio.run(guarded())


def freeze_startup_heap() -> None:
    """Moves every object alive once a stage has started (modules, the model, servers) out of the collector's
    reach: a full collection then scans only what requests allocated since, instead of stalling a request for
    as long as it takes to walk the whole start-up heap."""
    gc.collect()
    gc.freeze()


class Stage(Protocol):
    """What a stage object offers its process: start, readiness, metrics and a draining stop."""

    metrics: Metrics

    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self, grace_s: float) -> None: ...


async def serve_stage(stage: Stage, host: str, status_port: int, drain_timeout_s: float,
                      describe: Callable[[], str], routes: Callable[[web.Application], None] | None = None) -> int:
    """Runs `stage` until a stop signal, then drains it within drain_timeout_s; returns the exit code 0.

    The status routes (/metrics, /health, /ready) come up first, so a slow start (a worker loading its
    model) already answers /health; a signal during start stops at once. An exception from start() is
    raised after everything started is stopped. status_port 0 serves no status routes (the gateway has
    them on its own HTTP port). describe() gives the line logged once the stage has started; routes adds the stage's
    own routes to the status port.
    """
    status = await start_status_server(host, status_port, stage.metrics, stage.ready, routes)
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
            freeze_startup_heap()
            await stopping
        else:
            start.cancel()
        log.info("draining (up to %.1f s)", drain_timeout_s)
        try:
            await asyncio.wait_for(stage.stop(drain_timeout_s), drain_timeout_s + STOP_MARGIN_S)
        except TimeoutError:
            log.error("stopping took more than %.1f s past the drain limit; exiting anyway", STOP_MARGIN_S)
        return 0
    finally:
        stopping.cancel()
        await status.cleanup()
