"""The host split times the pieces of real Runner steps while entered and leaves every function as it was."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from bench.host_split import PIECES, HostSplit
from bench.worker_host import MODES, build, plan_bytes, race_left_out, time_steps
from services.worker.model_runner import ModelRunner
from services.worker.runner import Runner
from services.worker.sampling import batch

pytestmark = pytest.mark.timeout(120)


def test_overlapped_sampled_steps_are_split_into_their_pieces_and_the_functions_restored_after() -> None:
    originals = (vars(Runner)["step"], vars(ModelRunner)["_launch"], batch.fill_bitmask)
    with tempfile.TemporaryDirectory() as folder, race_left_out():
        engine = build(Path(folder), 4, 64, 64)
        plans = plan_bytes(4, 6, MODES["t1"])
        start = time.perf_counter()
        with HostSplit() as split:
            time_steps(engine, plans, warmup=0)
        wall = time.perf_counter() - start
    per_step = split.ms_per_step(5)
    # No grammar, so no mask fill; every step after the first is queued behind the one before and resolved.
    assert set(per_step) == {piece for piece, _, _ in PIECES} - {"mask fill"}
    assert list(per_step.values()) == sorted(per_step.values(), reverse=True)
    assert sum(split.total_s.values()) <= wall
    assert (vars(Runner)["step"], vars(ModelRunner)["_launch"], batch.fill_bitmask) == originals
