"""On a CUDA GPU: the guided-decoding property of tests/unit/worker/test_guided_property.py with the worker in
bf16 with CUDA graphs and xgrammar's Triton masking kernel; every finished output validates."""

from __future__ import annotations

import pytest

from services.demo.build import build_demo_model
from services.worker.config import WorkerConfig
from services.worker.engine import build_engine
from tests.unit.worker.test_guided_property import MAX_TOKENS, SCHEMAS_PER_BATCH, check_property

pytestmark = pytest.mark.gpu


@pytest.mark.timeout(600)
def test_every_finished_output_validates_on_the_gpu(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = build_demo_model(tmp_path_factory.mktemp("model") / "demo")
    engine = build_engine(WorkerConfig(model=str(folder), device="cuda", dtype="bfloat16", max_model_len=256,
                                       num_kv_blocks=SCHEMAS_PER_BATCH * (MAX_TOKENS // 16 + 2),
                                       max_num_seqs=SCHEMAS_PER_BATCH))
    seen = check_property(folder, engine)
    assert seen["finished"] >= 200, seen
