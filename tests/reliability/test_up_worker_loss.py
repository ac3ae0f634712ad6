"""`flashstream up --num-workers 2` keeps serving when a worker is killed, says so, and restarts it.

Requests sent one after another while the worker dies each end exactly once (all their tokens and one Done, or
UNAVAILABLE for the ones streaming on it); the scheduler has both workers again after the restart; Ctrl-C
still stops everything.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc

from services.common.call_auth import token_metadata
from services.common.internal_tls import InternalTls, write_stack_certs
from services.launcher import python_path_env, stage_channel

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


class Launcher:
    """`flashstream up` as a child process, its output read line by line in a thread."""

    def __init__(self, tmp_path: Path) -> None:
        env = python_path_env()
        env["FLASHSTREAM_CACHE_DIR"] = str(tmp_path / "cache")
        env["FLASHSTREAM_INTERNAL_TOKEN"] = self.token = "test-internal-token"
        self.tls = InternalTls.from_dir(write_stack_certs(tmp_path / "tls"))  # so that the test can call inside
        env["FLASHSTREAM_INTERNAL_TLS_DIR"] = str(tmp_path / "tls")
        cmd = [sys.executable, "-m", "services.cli", "up", "--base-port", "0", "--http-port", "0", "--device", "cpu",
               "--load-format", "fake", "--num-workers", "2", "--num-gateways", "1", "--num-tokenizers", "1",
               "--prompt", "", "--log-dir", str(tmp_path / "logs")]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.output.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.output))

    def children(self) -> dict[str, int]:
        """pid of each stage process, by its `serve` kind and port."""
        found = {}
        for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            found[f"{argv[argv.index('serve') + 1]}:{argv[argv.index('--port') + 1]}"] = int(pid)
        return found


def _generate(stub: gateway_pb2_grpc.GatewayStub, i: int) -> str:
    """How one request ended: 'done' (all 64 tokens, one Done) or the status code's name."""
    request = gateway_pb2.GenerateRequest(prompt=f"request {i}", options=gateway_pb2.GenerateOptions(
        sampling=common_pb2.SamplingParams(max_tokens=64, ignore_eos=True), bypass_cache=True))
    tokens, dones = 0, 0
    try:
        for message in stub.Generate(request, timeout=30):
            if message.HasField("chunk"):
                tokens += len(message.chunk.token_ids)
            else:
                dones += 1
    except grpc.RpcError as exc:
        return exc.code().name if dones == 0 else "error after done"
    return "done" if (tokens, dones) == (64, 1) else f"{tokens} tokens, {dones} dones"


def test_up_survives_a_killed_worker_says_so_and_restarts_it(tmp_path: Path) -> None:
    up = Launcher(tmp_path)
    try:
        gateway = up.wait_line(r"gRPC\s+(\S+)\s+\(flashstream.v1.Gateway\)", 180)[1]
        up.wait_line(r"Ctrl-C stops every stage", 10)
        scheduler = next(k for k in up.children() if k.startswith("scheduler:")).split(":")[1]
        assert sum(k.startswith("worker:") for k in up.children()) == 2
        port = next(re.search(r"^worker1 ready on [\d.]+:(\d+) ", line) for line in up.output if "worker1 ready" in line)[1]
        victim = up.children()[f"worker:{port}"]

        with grpc.insecure_channel(gateway) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            endings: list[str] = []
            stop = threading.Event()

            def load() -> None:
                i = 0
                while not stop.is_set():
                    endings.append(_generate(stub, i))
                    i += 1

            loader = threading.Thread(target=load)
            loader.start()
            time.sleep(1.0)
            os.kill(victim, signal.SIGKILL)
            up.wait_line(r"^worker1 exited with code -9; the other workers keep serving; restarting it in 1 s "
                         r"\(restart 1 of 5\)$", 10)
            num_before_restart = len(endings)
            up.wait_line(r"^worker1 restarted \(pid \d+\)$", 10)
            time.sleep(1.0)
            stop.set()
            loader.join(timeout=60)

            assert up.proc.poll() is None, "the stack stopped"
            assert set(endings) <= {"done", "UNAVAILABLE"}, endings
            assert endings.count("done") >= num_before_restart - 1  # at most the one streaming on it failed
            with stage_channel(f"127.0.0.1:{scheduler}", up.tls) as sched_channel:
                sched = scheduler_pb2_grpc.SchedulerStub(sched_channel)
                deadline = time.monotonic() + 30
                metadata = token_metadata(up.token)
                while sched.Info(scheduler_pb2.SchedulerInfoRequest(), metadata=metadata).num_workers != 2:
                    assert time.monotonic() < deadline, "the restarted worker did not rejoin"
                    time.sleep(0.1)
            assert _generate(stub, 10_000) == "done"
        assert victim not in up.children().values()
    finally:
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=60) == 0
