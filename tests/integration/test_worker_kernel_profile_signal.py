"""A worker started with --kernel-profile-dir catches SIGUSR1 and arms a window (the serving suite's kernel traces
depend on it): a real worker process on the CPU, the demo model, the signal sent as the suite sends it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.serve_suite import signal_disposition
from services.demo import build_demo_model
from services.launcher import free_port, python_path_env, wait_serving

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def test_sigusr1_reaches_a_profiling_workers_handler_and_the_worker_stays_up(tmp_path: Path) -> None:
    model_dir = build_demo_model(tmp_path / "demo")
    port, log_path = free_port(), tmp_path / "worker.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "worker", "--host", "127.0.0.1", "--port", str(port),
             "--status-port", "0", "--model", str(model_dir), "--device", "cpu",
             "--kernel-profile-dir", str(tmp_path / "kernels"), "--kernel-profile-steps", "3"],
            env=python_path_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_serving(f"127.0.0.1:{port}", 90, proc)
        assert signal_disposition(proc.pid, signal.SIGUSR1) == "caught"
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while "kernel profile window asked for" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = log_path.read_text()
        assert f"kernel profile: SIGUSR1 to pid {proc.pid} traces the next 3 steps into {tmp_path / 'kernels'}" in text
        assert "kernel profile window asked for; it opens at the next step" in text
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
