"""A worker started with --kernel-profile-dir opens a kernel window when the serving suite asks its status port
(POST /kernel-profile), and one started without says that profiling is off: real worker processes on the CPU, the
demo model, asked as the suite asks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.serve_suite import ask_kernel_profile
from services.demo import build_demo_model
from services.launcher import free_port, python_path_env, wait_serving

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def _start_worker(model_dir: Path, log_path: Path, *args: str) -> tuple[subprocess.Popen, int, int]:
    port, status_port = free_port(), free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "worker", "--host", "127.0.0.1", "--port", str(port),
             "--status-port", str(status_port), "--model", str(model_dir), "--device", "cpu", *args],
            env=python_path_env(), stdout=log, stderr=subprocess.STDOUT)
    return proc, port, status_port


def test_a_profiling_worker_arms_a_window_when_asked_over_http_and_stays_up(tmp_path: Path) -> None:
    model_dir = build_demo_model(tmp_path / "demo")
    log_path = tmp_path / "worker.log"
    proc, port, status_port = _start_worker(model_dir, log_path, "--kernel-profile-dir", str(tmp_path / "kernels"),
                                            "--kernel-profile-steps", "3")
    try:
        wait_serving(f"127.0.0.1:{port}", 90, proc)
        answer = ask_kernel_profile(f"http://127.0.0.1:{status_port}/metrics")
        assert json.loads(answer) == {"status": "armed", "steps": 3, "dir": str(tmp_path / "kernels")}
        deadline = time.monotonic() + 20
        while "kernel profile window asked for" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = log_path.read_text()
        assert (f"kernel profile: POST /kernel-profile on the status port traces the next 3 steps into "
                f"{tmp_path / 'kernels'}") in text
        assert "kernel profile window asked for; it opens at the next step" in text
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_worker_without_a_kernel_profile_dir_answers_409_and_stays_up(tmp_path: Path) -> None:
    model_dir = build_demo_model(tmp_path / "demo")
    proc, port, status_port = _start_worker(model_dir, tmp_path / "worker.log")
    try:
        wait_serving(f"127.0.0.1:{port}", 90, proc)
        code, _, body = ask_kernel_profile(f"http://127.0.0.1:{status_port}/metrics").partition(": ")
        assert code == "409"
        assert json.loads(body) == {"error": {
            "message": "kernel profiling is off: start the worker with --kernel-profile-dir",
            "type": "invalid_request_error", "param": None, "code": "kernel_profile_off"}}
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
