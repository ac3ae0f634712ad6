"""`flashstream up` as a user runs it: builds the demo model, starts every stage, streams, stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.launcher import python_path_env

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def _stage_processes(cache_dir: str) -> list[int]:
    """Pids of `flashstream serve` processes that inherited FLASHSTREAM_CACHE_DIR=cache_dir from one launcher."""
    marker = f"FLASHSTREAM_CACHE_DIR={cache_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"serve" in cmdline.split(b"\0") and marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _up(tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = python_path_env()
    env["FLASHSTREAM_CACHE_DIR"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "services.cli", "up", "--base-port", "0", "--http-port", "0", "--device", "cpu",
           "--log-dir", str(tmp_path / "logs"), "--max-tokens", "8", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_up_builds_the_demo_model_streams_an_answer_and_stops_every_stage(tmp_path: Path) -> None:
    # Two gateways share the public ports and reach both tokenizers; the answer streams through them.
    proc = _up(tmp_path, "--prompt", "Once upon a time", "--exit-after-prompt", "--num-gateways", "2",
               "--num-tokenizers", "2")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "FlashStream is up (6 processes, model flashstream-demo)" in out
    assert "(flashstream.v1.Gateway)" in out
    assert "[8 tokens, finish LENGTH, TTFT" in out or "finish EOS" in out, out
    assert (tmp_path / "cache" / "demo-model-v1" / "model.safetensors").is_file()
    time.sleep(0.5)
    assert _stage_processes(str(tmp_path / "cache")) == []


def test_up_with_a_taken_port_names_it_and_its_process_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = python_path_env()
        env["FLASHSTREAM_CACHE_DIR"] = str(tmp_path / "cache")
        out = subprocess.run([sys.executable, "-m", "services.cli", "up", "--base-port", "0", "--http-port",
                              str(port), "--device", "cpu", "--exit-after-prompt"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"error: port {port} (gateway HTTP API) on 127.0.0.1 is already in use by pid {os.getpid()}" in out.stderr
    assert out.stderr.count("error") == 1
    assert "starting" not in out.stdout and "FlashStream is up" not in out.stdout
    assert _stage_processes(str(tmp_path / "cache")) == []


def test_up_serves_a_preset_with_its_padded_tokenizer_and_prints_each_stage_start(tmp_path: Path) -> None:
    proc = _up(tmp_path, "--model", "qwen2.5-0.5b", "--load-format", "fake", "--prompt", "Hello",
               "--exit-after-prompt", "--num-gateways", "1", "--num-tokenizers", "1")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "building the qwen2.5-0.5b preset folder" in out
    assert "FlashStream is up (4 processes, model qwen2.5-0.5b)" in out
    assert re.findall(r"^(\w+) ready on 127\.0\.0\.1:\d+ in \d+\.\d s$", out, re.M) == [
        "worker0", "scheduler", "tokenizer", "gateway"]
    assert "[8 tokens, finish LENGTH" in out, out


def test_sigterm_stops_the_launcher_and_leaves_no_orphan(tmp_path: Path) -> None:
    proc = _up(tmp_path, "--prompt", "")
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Ctrl-C stops every stage" in line or not line:
            break
    assert "Ctrl-C stops every stage" in lines[-1], "".join(lines)
    children = _stage_processes(str(tmp_path / "cache"))
    assert len(children) == 4, children
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    deadline = time.monotonic() + 10
    while _stage_processes(str(tmp_path / "cache")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _stage_processes(str(tmp_path / "cache")) == []


def test_a_killed_launcher_takes_its_stages_with_it(tmp_path: Path) -> None:
    proc = _up(tmp_path, "--prompt", "")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "Ctrl-C stops every stage" in line or not line:
            break
    assert len(_stage_processes(str(tmp_path / "cache"))) == 4
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 15
    while _stage_processes(str(tmp_path / "cache")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _stage_processes(str(tmp_path / "cache")) == []


def test_a_stage_whose_port_answers_from_another_process_is_not_reported_started(tmp_path: Path) -> None:
    """Another process serves gRPC health (SERVING) on the scheduler's port: the scheduler this launcher starts
    cannot bind it, and the launcher refuses the other process's answer instead of calling the stage ready."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from services.launcher import ChildStage, PortTaken, Stack

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stack = Stack()
    try:
        stage = ChildStage("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--status-port", "0",
                                    "--workers", "127.0.0.1:1"], f"127.0.0.1:{port}")
        with pytest.raises(PortTaken, match=rf"scheduler's port {port} answers from another process \(pid "
                                            rf"{os.getpid()}: "):
            stack.start(stage, python_path_env(), 60, tmp_path)
    finally:
        stack.stop()
        server.stop(None)


def test_a_model_the_worker_refuses_fails_once_with_the_workers_own_reason(tmp_path: Path) -> None:
    from services.demo import build_demo_model

    folder = build_demo_model(tmp_path / "model")
    (folder / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "vocab_size": 1024}')
    proc = _up(tmp_path, "--model", str(folder), "--exit-after-prompt")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and out.count("starting worker0") == 1, out  # no retry with other ports
    assert errors[0].startswith("error: worker0: stage at 127.0.0.1:")
    assert "architecture ['GPT2LMHeadModel'] is not supported" in errors[0]
