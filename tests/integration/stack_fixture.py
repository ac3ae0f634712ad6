"""Starts the four stages as real processes on loopback for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from flashstream.v1 import common_pb2, scheduler_pb2_grpc

from services.common.call_auth import token_metadata
from services.launcher import Stack, start_stack
from services.up_options import parse_args


def stack_device() -> str:
    """The worker's device in stack tests: cpu, or cuda where FLASHSTREAM_TEST_DEVICE=cuda (GPU machines)."""
    return os.environ.get("FLASHSTREAM_TEST_DEVICE", "cpu")


@contextmanager
def running_stack(model_dir: Path, log_dir: Path, worker_args: str = "", extra: Sequence[str] = ()) -> Iterator[Stack]:
    """The whole stack on free ports with the model in model_dir; stopped (SIGTERM, drain) on exit.

    On CUDA the worker runs in float32 so that greedy tokens compare exactly with transformers on the CPU."""
    device = stack_device()
    if device != "cpu":
        worker_args = f"--dtype float32 {worker_args}"
    args = parse_args(["--base-port", "0", "--http-port", "0", "--device", device, "--ready-timeout-s", "180",
                       "--model-id", "flashstream-demo", "--worker-args", worker_args, *extra])
    stack = start_stack(args, str(model_dir), log_dir)
    try:
        yield stack
    finally:
        stack.stop()


def stage_logs(log_dir: Path) -> str:
    """Every stage's log, for assertion messages when something fails."""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(log_dir.glob("*.log")))


def scheduler_state_when_idle(stack: Stack, timeout_s: float = 10.0) -> common_pb2.EngineState:
    """The scheduler's engine state (WatchEngine) once nothing runs, waits or holds KV blocks (or as it is after
    timeout_s); the call carries the stack's internal token over its internal TLS."""
    scheduler = next(s for s in stack.stages if s.name == "scheduler")
    metadata = token_metadata(stack.internal_token)
    with stack.internal_channel(scheduler.grpc_address) as channel:
        states = scheduler_pb2_grpc.SchedulerStub(channel).WatchEngine(
            common_pb2.WatchEngineRequest(interval_s=0.1), metadata=metadata)
        deadline = time.monotonic() + timeout_s
        state = next(states)
        while (state.num_running or state.num_waiting or state.kv_cache_usage) and time.monotonic() < deadline:
            state = next(states)
        states.cancel()
    return state
