"""A worker whose step runs past stuck_step_s reports not ready; between steps, and during a normal step, it is."""

from __future__ import annotations

import time

from services.common.config import ServerConfig
from services.worker.config import WorkerConfig
from services.worker.server import WorkerStage


def test_ready_turns_false_while_a_step_runs_past_its_limit():
    stage = WorkerStage(WorkerConfig(model="llama-3.2-1b", load_format="fake", server=ServerConfig()))
    stage.servicer.engine = object()  # type: ignore[assignment]  # built: only readiness is read here
    stage.servicer.stuck_step_s = 0.5
    assert stage.ready()
    stage.servicer.step_started = time.monotonic() - 0.1
    assert stage.ready()
    stage.servicer.step_started = time.monotonic() - 0.6
    assert not stage.ready()
    stage.servicer.step_started = None
    assert stage.ready()
