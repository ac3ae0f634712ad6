"""Input-major projection weights: same parameters and values, transposed storage, same model output."""

from __future__ import annotations

from pathlib import Path

import torch

from services.worker.models.decoder import INPUT_MAJOR_PROJECTIONS, store_projections_input_major
from tests.unit.worker.helpers import Driver, cpu_engine, make_checkpoint, run_greedy

PROMPTS = {1: [5, 17, 99, 3, 250, 41, 7, 7, 128, 64], 2: [9, 8, 7]}


def test_input_major_projections_keep_values_shapes_and_greedy_tokens(tmp_path: Path) -> None:
    folder = make_checkpoint("llama3_rope", tmp_path / "m")
    expected = run_greedy(Driver(cpu_engine(folder)), PROMPTS, 8)
    engine = cpu_engine(folder)
    model = engine.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert store_projections_input_major(model) == len(INPUT_MAJOR_PROJECTIONS) * model.cfg.num_layers
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])
        projection = name.split(".")[-2] in INPUT_MAJOR_PROJECTIONS
        assert p.is_contiguous() != projection or p.dim() == 1, name
        if projection:
            assert p.t().is_contiguous()
    assert run_greedy(Driver(engine), PROMPTS, 8) == expected
