"""A step's sampling metadata built the quick way for its common rows is what the general way builds: seeded rows'
draw keys computed for the whole batch at once are the per-row keys bit for bit, and rows shaped only by their
temperature, seed and grammar skip the per-feature checks without changing a field."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from services.common.sampling import Guided, SamplingParams
from services.demo.build import VOCAB_SIZE, build_demo_model
from services.worker.grammar import GrammarCache
from services.worker.sampling.batch import SamplingBatch
from services.worker.sampling.noise import draw_key, draw_keys
from services.worker.sampling.types import SamplingRow
from tests.unit.worker.guided_helpers import EOS_ID

pytestmark = pytest.mark.timeout(120)

SCHEMA = Guided("json_schema", json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))


@pytest.fixture(scope="module")
def grammars(tmp_path_factory: pytest.TempPathFactory) -> GrammarCache:
    folder: Path = build_demo_model(tmp_path_factory.mktemp("model") / "demo")
    return GrammarCache(folder, VOCAB_SIZE, [EOS_ID])


def test_batched_keys_equal_the_per_row_keys_across_the_whole_seed_and_position_range() -> None:
    pairs = [(0, 0), (42, 7), (1, 2**32), (2**32 - 1, 5), (2**62 + 5, 0), (2**63 - 1, 2**63 - 1), (123456789, 4095)]
    seeds, positions = zip(*pairs)
    keys = draw_keys(seeds, positions)
    assert keys.dtype.name == "int64" and keys.shape == (len(pairs), 2)
    assert [tuple(k) for k in keys.tolist()] == [draw_key(s, p) for s, p in pairs]
    assert keys[0].tolist() == [1293516399, 2802244911]
    assert keys[-2].tolist() == [2589169842, 2523562805]


def test_a_batch_holds_the_key_of_each_seeded_row_at_its_draw_position_in_row_order() -> None:
    rows = [SamplingRow(SamplingParams(max_tokens=64, **params), [], output) for output, params in (
        ([1, 2], {"temperature": 1.0, "seed": 9}), ([], {"temperature": 0.7}), ([3], {}),
        ([4, 5, 6], {"temperature": 1.0, "seed": 2**63 - 1}))]
    batch = SamplingBatch.build(rows, 50, (0,), torch.device("cpu"))
    assert batch.seeded_local.tolist() == [0, 2]  # positions within the sampled rows 0, 1 and 3
    assert batch.seeded_keys.tolist() == [list(draw_key(9, 2)), list(draw_key(2**63 - 1, 3))]
    assert batch.num_unseeded == 1


def _assert_same(a: object, b: object) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "bitmask":  # only the guided rows' masks are written (and read)
            rows = a.rows.tolist()
            assert torch.equal(x[rows], y[rows]) and torch.equal(a.rows, b.rows)
        elif isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and torch.equal(x, y), f.name
        elif dataclasses.is_dataclass(x):
            _assert_same(x, y)
        else:
            assert x == y, f.name


def test_guided_and_seeded_rows_build_the_batch_the_per_feature_checks_build(grammars: GrammarCache) -> None:
    ended = grammars.start(SCHEMA, [])
    ended.ended = True  # its grammar is complete: the row goes unmasked
    specs = [  # (params, grammar state or None, generated tokens)
        (SamplingParams(max_tokens=64, guided=SCHEMA), grammars.start(SCHEMA, []), []),
        (SamplingParams(max_tokens=64, temperature=0.8, seed=5, guided=SCHEMA), grammars.start(SCHEMA, []), [7, 8]),
        (SamplingParams(max_tokens=64), None, []),
        (SamplingParams(max_tokens=64, temperature=1.0, seed=3), None, [9]),
        (SamplingParams(max_tokens=64, temperature=1.0, guided=SCHEMA), ended, [4]),
        (SamplingParams(max_tokens=64, temperature=1.5), None, []),
    ]
    quick = [SamplingRow(p, [2, 3], out, g) for p, g, out in specs]
    # top_k at the vocabulary size is no truncation, but it keeps a row off the quick paths.
    general = [SamplingRow(replace(p, top_k=VOCAB_SIZE), [2, 3], out, g) for p, g, out in specs]
    assert [r.simple for r in quick] == [True] * 6 and [r.plain for r in quick] == [False, False, True, False,
                                                                                      False, True]
    assert not any(r.simple for r in general)
    a = SamplingBatch.build(quick, VOCAB_SIZE, (EOS_ID,), torch.device("cpu"))
    b = SamplingBatch.build(general, VOCAB_SIZE, (EOS_ID,), torch.device("cpu"))
    _assert_same(a, b)
    assert a.grammar.rows.tolist() == [0, 1]
    assert a.sample_rows.tolist() == [1, 3, 4, 5]
    assert a.seeded_keys.tolist() == [list(draw_key(5, 2)), list(draw_key(3, 1))]
