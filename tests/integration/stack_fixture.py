"""Starts the four stages as real processes on loopback for end-to-end tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from services.launcher import Stack, parse_args, start_stack


@contextmanager
def running_stack(model_dir: Path, log_dir: Path, extra: Sequence[str] = ()) -> Iterator[Stack]:
    """The whole stack on free ports with the model in model_dir; stopped (SIGTERM, drain) on exit."""
    args = parse_args(["--base-port", "0", "--http-port", "0", "--device", "cpu", "--ready-timeout-s", "180",
                       "--model-id", "flashstream-demo", *extra])
    stack = start_stack(args, str(model_dir), log_dir)
    try:
        yield stack
    finally:
        stack.stop()


def stage_logs(log_dir: Path) -> str:
    """Every stage's log, for assertion messages when something fails."""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(log_dir.glob("*.log")))
