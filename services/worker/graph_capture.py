"""One CUDA graph captured: a warm-up run on a side stream (compiles kernels, settles allocations), then the capture.

Python's garbage collector stays off during a capture. A collection there may free pinned host memory that earlier
objects held (another engine's, a finished step's); the host allocator then queries CUDA events, which the global
capture mode forbids on every thread, and the capture fails. A capture that fails all the same (an operation the
capture did not allow) is warmed up and captured once more: what it needed is loaded by then."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def capture_graph(run: Callable[[], None], pool: tuple, stream: torch.cuda.Stream, name: str) -> torch.cuda.CUDAGraph:
    """A graph of `run` (its tensors static: replays rewrite them in place) in memory pool `pool`; name: for the
    log of a retried capture."""
    try:
        return _capture(run, pool, stream)
    except RuntimeError as exc:  # torch.AcceleratorError is one
        log.warning("capture of %s failed (%s); warming up and capturing it again", name, exc)
        torch.cuda.synchronize()
        return _capture(run, pool, stream)


def _capture(run: Callable[[], None], pool: tuple, stream: torch.cuda.Stream) -> torch.cuda.CUDAGraph:
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # warm-up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph, pool=pool):
            run()
    finally:
        if enabled:
            gc.enable()
    return graph
