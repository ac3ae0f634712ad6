"""The runner (fp32, CPU, torch references) reproduces transformers for every supported architecture."""

from __future__ import annotations

import pytest
import torch

from services.worker.attention_metadata import SeqChunk
from tests.unit.worker.helpers import CHECKPOINTS, Driver, cpu_engine, hf_greedy, make_checkpoint, run_greedy

PROMPT = [5, 17, 99, 3, 250, 41, 7, 7, 128, 64, 33, 2, 200, 11, 90, 150, 6, 73, 12]


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request, tmp_path_factory):  # noqa: ANN001, ANN201
    return request.param, make_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def test_prefill_logits_match_transformers_within_1e4(checkpoint) -> None:  # noqa: ANN001
    _, folder = checkpoint
    engine = cpu_engine(folder)
    _, expected = hf_greedy(folder, PROMPT, 0)
    model_runner = engine.runner.executor
    blocks = list(range(-(-len(PROMPT) // 16)))
    logits = model_runner.forward(PROMPT, [SeqChunk(0, len(PROMPT), blocks)], [0])[0]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_32_greedy_tokens_match_transformers(checkpoint) -> None:  # noqa: ANN001
    _, folder = checkpoint
    expected, _ = hf_greedy(folder, PROMPT, 32)
    got = run_greedy(Driver(cpu_engine(folder)), {1: PROMPT}, 32)
    assert got[1] == expected


def test_batched_prompts_of_different_lengths_keep_each_greedy_result(checkpoint) -> None:  # noqa: ANN001
    _, folder = checkpoint
    prompts = {1: PROMPT, 2: PROMPT[:5], 3: (PROMPT * 3)[:40]}
    expected = {seq_id: hf_greedy(folder, p, 16)[0] for seq_id, p in prompts.items()}
    assert run_greedy(Driver(cpu_engine(folder)), prompts, 16) == expected


def test_chunked_prefill_gives_the_same_greedy_tokens(checkpoint) -> None:  # noqa: ANN001
    _, folder = checkpoint
    prompts = {1: (PROMPT * 3)[:40], 2: PROMPT[:9]}
    expected = {seq_id: hf_greedy(folder, p, 16)[0] for seq_id, p in prompts.items()}
    assert run_greedy(Driver(cpu_engine(folder)), prompts, 16, chunk=7) == expected


def test_decodes_ahead_of_prefill_chunks_in_one_step_keep_transformers_tokens(checkpoint) -> None:  # noqa: ANN001
    """Seq 2 decodes ahead of seq 1's prompt chunks, so the middle steps split between decode and prefill attention."""
    _, folder = checkpoint
    prompts = {2: PROMPT[:4], 1: (PROMPT * 3)[:40]}
    expected = {seq_id: hf_greedy(folder, p, 12)[0] for seq_id, p in prompts.items()}
    assert run_greedy(Driver(cpu_engine(folder)), prompts, 12, chunk=9) == expected


def test_prefix_cache_hit_reuses_blocks_an_earlier_sequence_filled(checkpoint) -> None:  # noqa: ANN001
    _, folder = checkpoint
    engine = cpu_engine(folder)
    driver = Driver(engine)
    first = (PROMPT * 3)[:40]
    run_greedy(driver, {1: first}, 1)
    # The second prompt shares the first 32 tokens (two full blocks) and diverges after.
    second = first[:32] + [9, 8, 7, 6, 5]
    shared = driver.blocks[1][:2]
    expected, _ = hf_greedy(folder, second, 16)
    got = []
    plan = driver.plan([driver.new_seq(2, second, len(second) - 32, shared_blocks=shared, num_computed=32)])
    while len(got) < 16:
        result = driver.step(plan)
        assert not result.errors
        got += result.sampled.token_ids
        plan = driver.plan(cached_seqs=[driver.cached_seq(2, 1)])
    assert got == expected
