"""A step's token masks on the demo tokenizer (a trained BPE vocabulary): one batched, threaded fill gives exactly
the masks each matcher fills alone, at every point of the outputs; the sampler masks the guided rows only, and a
grammar that has ended leaves its row as it was."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import xgrammar
from tokenizers import Tokenizer

from services.common.sampling import Guided, SamplingParams
from services.demo.build import VOCAB_SIZE, build_demo_model
from services.worker.grammar import GrammarCache, GrammarState, bitmask_words, fill_bitmask
from services.worker.sampler import Sampler, SamplingRow
from tests.unit.worker.guided_helpers import EOS_ID

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "tags": {"type": "array", "items": {"enum": ["red", "a b"]},
                                                    "maxItems": 3},
                                           "name": {"type": "string", "maxLength": 6}},
          "required": ["n", "name"]}
SPECS = [Guided("json_schema", json.dumps(SCHEMA)), Guided("json_object"), Guided("regex", r"[a-f]{2,9}-\d{1,3}"),
         Guided("grammar", 'root ::= "(" item ("," item)* ")"\nitem ::= [0-9]+ | "x"')]


@pytest.fixture(scope="module")
def grammars(tmp_path_factory: pytest.TempPathFactory) -> GrammarCache:
    folder: Path = build_demo_model(tmp_path_factory.mktemp("model") / "demo")
    return GrammarCache(folder, VOCAB_SIZE, [EOS_ID])


def _allowed(bitmask: torch.Tensor) -> torch.Tensor:
    """[rows, words] int32 masks as [rows, VOCAB_SIZE] bool, True where the token is allowed."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # [rows, words, 32]
    return bits.reshape(bitmask.shape[0], -1)[:, :VOCAB_SIZE].bool()


def _encode(grammars: GrammarCache, text: str) -> list[int]:
    return Tokenizer.from_file(str(Path(grammars.tokenizer_dir) / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def _alone(states: list[GrammarState]) -> torch.Tensor:
    """Each matcher's own fill, row by row: [len(states), words] int32."""
    bitmask = xgrammar.allocate_token_bitmask(len(states), VOCAB_SIZE)
    for j, state in enumerate(states):
        state.matcher.fill_next_token_bitmask(bitmask, j)
    return bitmask


def test_the_batched_fill_gives_exactly_the_masks_of_each_matcher_filling_alone(grammars: GrammarCache) -> None:
    rng = random.Random(7)
    states = [grammars.start(SPECS[i % len(SPECS)], []) for i in range(12)]
    num_ended = 0
    for _ in range(60):
        live = [s for s in states if not s.ended]
        if not live:
            break
        batched = torch.full((len(live), bitmask_words(VOCAB_SIZE)), 0x5A5A5A5A, dtype=torch.int32)  # stale words
        fill_bitmask(live, batched)
        assert torch.equal(batched, _alone(live))
        for state, allowed in zip(live, _allowed(batched)):
            token = rng.choice(allowed.nonzero().flatten().tolist())
            assert state.accept(token)
            num_ended += state.ended
    assert num_ended >= 6  # the fills covered finished grammars' last steps, where only EOS is allowed


def test_a_grammar_ends_with_its_stop_token_and_accepts_anything_after(grammars: GrammarCache) -> None:
    state = grammars.start(Guided("regex", "(yes|no)"), [])
    for token in _encode(grammars, "no"):
        assert state.accept(token) and not state.ended
    assert not state.accept(_encode(grammars, "x")[0])  # refused: nothing is appended after "no"
    assert state.accept(EOS_ID) and state.ended and state.matcher.is_terminated()
    assert state.accept(5) and state.ended


def test_the_sampler_masks_the_guided_rows_only_and_not_an_ended_grammar(grammars: GrammarCache) -> None:
    """Rows: guided (regex), plain, guided but ended, guided (JSON schema), plain."""
    ended = grammars.start(Guided("regex", "(yes|no)"), [])
    for token in [*_encode(grammars, "yes"), EOS_ID]:
        assert ended.accept(token)
    assert ended.ended
    guided = {0: grammars.start(SPECS[2], []), 2: ended, 3: grammars.start(SPECS[0], [])}
    rows = [SamplingRow(SamplingParams(), [3, 4], [], guided.get(i)) for i in range(5)]
    logits = torch.randn(5, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    masked = Sampler(VOCAB_SIZE, [EOS_ID]).adjusted_logits(logits, rows)
    expected = logits.clone()
    allowed = _allowed(_alone([guided[0], guided[3]]))
    expected[0][~allowed[0]] = float("-inf")
    expected[3][~allowed[1]] = float("-inf")
    assert torch.equal(masked, expected)
    assert 0 < int(allowed[0].sum()) < VOCAB_SIZE and 0 < int(allowed[1].sum()) < VOCAB_SIZE
