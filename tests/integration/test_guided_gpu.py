"""On a CUDA GPU: the guided-decoding property of tests/unit/worker/test_guided_property.py with the worker in
bf16 with CUDA graphs and xgrammar's Triton masking kernel, every finished output valid; and guided steps queued
ahead of their turn (masks filled while the forward pass runs) giving the tokens of the sequential path, with
guided rows beside a plain one."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.demo.build import build_demo_model
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from tests.unit.worker.guided_helpers import InFlightRun
from tests.unit.worker.test_guided_property import MAX_TOKENS, SCHEMAS_PER_BATCH, check_property
from tests.unit.worker.test_guided_worker import mixed_requests

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("model") / "demo")


@pytest.mark.timeout(600)
def test_every_finished_output_validates_on_the_gpu(folder: Path) -> None:
    engine = build_engine(WorkerConfig(model=str(folder), device="cuda", dtype="bfloat16", max_model_len=256,
                                       num_kv_blocks=SCHEMAS_PER_BATCH * (MAX_TOKENS // 16 + 2),
                                       max_num_seqs=SCHEMAS_PER_BATCH))
    seen = check_property(folder, engine)
    assert seen["finished"] >= 200, seen


def test_guided_steps_queued_ahead_give_the_sequential_tokens_on_the_gpu(folder: Path) -> None:
    runs = []
    for overlap in (False, True):
        engine = build_engine(WorkerConfig(model=str(folder), device="cuda", dtype="bfloat16", max_model_len=256,
                                           num_kv_blocks=64, max_num_seqs=8))
        run = InFlightRun(engine, overlap=overlap)
        run.run(mixed_requests(), preempt={2: 4})
        runs.append((run, engine))
    (sequential, _), (overlapped, engine) = runs
    assert overlapped.errors == sequential.errors == {}
    assert overlapped.steps == sequential.steps
    assert engine.runner.num_overlapped_steps == overlapped.step_id - 1
