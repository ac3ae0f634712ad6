"""A stage started (or restarted) by a process that is busy with gRPC calls starts: none is aborted between fork
and exec. The launcher, the supervisor's restarts and the stack tests all spawn stages from such processes; gRPC's
fork handlers used to abort about one child in ten (SIGABRT, "epoll_wait error: Bad file descriptor") when the
spawn ran Python code in the child before exec.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.stage import LAUNCHER_PID_VARIABLE
from services.launcher import ChildStage, Stack, python_path_env

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

NUM_SPAWNS = 120  # about one in twenty aborted before: all 120 starting by luck is a 0.2 % chance


@pytest.fixture
def busy_grpc() -> Iterator[None]:
    """Two threads of this process calling a gRPC server of this process as fast as they can."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()

    def call() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

    callers = [threading.Thread(target=call) for _ in range(2)]
    for caller in callers:
        caller.start()
    yield
    stop.set()
    for caller in callers:
        caller.join(timeout=10)
    server.stop(None)


def test_stages_spawned_while_grpc_calls_run_all_reach_their_own_code(busy_grpc: None) -> None:
    stack = Stack()
    stack.env = python_path_env()
    # `flashstream serve` with no known stage prints its usage and exits 2: the child ran the command.
    stages = [ChildStage(f"stage{i}", ["--no-such-stage"], "") for i in range(NUM_SPAWNS)]
    for stage in stages:
        stack.spawn(stage)
    codes = [stage.proc.wait(timeout=60) for stage in stages]
    assert {code: codes.count(code) for code in codes} == {2: NUM_SPAWNS}


def test_a_stage_whose_launcher_is_gone_before_it_starts_exits_without_serving() -> None:
    env = python_path_env() | {LAUNCHER_PID_VARIABLE: "1"}  # not its parent: the launcher that started it died
    done = subprocess.run([sys.executable, "-m", "services.cli", "serve", "scheduler", "--host", "127.0.0.1",
                           "--port", "0", "--workers", "127.0.0.1:9"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert "the launcher that started this stage has exited; not starting" in done.stderr
    assert "serving gRPC" not in done.stderr
