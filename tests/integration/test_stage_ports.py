"""A stage whose port is taken says so in one line, naming the port and its holder, and exits 1 (no traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _serve(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "services.cli", "serve", *argv], capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)


def _error_lines(stderr: str) -> list[str]:
    # grpc's C core logs its own line (E.... add_port.cc) before ours; a traceback would add "Traceback" lines.
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("flashstream ")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("argv", "what"), [
    (["scheduler", "--host", "127.0.0.1", "--port", "{port}", "--status-port", "0", "--workers", "127.0.0.1:1"],
     "gRPC"),
    (["scheduler", "--host", "127.0.0.1", "--port", "0", "--status-port", "{port}", "--workers", "127.0.0.1:1"],
     "status HTTP"),
    (["gateway", "--host", "127.0.0.1", "--port", "0", "--http-port", "{port}", "--tokenizers", "127.0.0.1:1"],
     "HTTP API"),
])
def test_a_stage_whose_port_is_taken_exits_1_with_one_line_naming_the_port_and_its_holder(
        held_port: int, argv: list[str], what: str) -> None:
    stage = argv[0]
    done = _serve([a.format(port=held_port) for a in argv])
    assert done.returncode == 1
    assert _error_lines(done.stderr) == [
        f"flashstream serve {stage}: error: port {held_port} ({what}) on 127.0.0.1 is already in use by pid "
        f"{os.getpid()}: {' '.join(Path(f'/proc/{os.getpid()}/cmdline').read_bytes().decode().split(chr(0))).strip()}"]
