"""The sampler's race: unseeded rows independent across rows and calls, the raw-logits path for temperature-1
batches, and on CUDA (the Triton race) the CPU's tokens for seeded rows and the softmax for unseeded ones."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from services.common.sampling import SamplingParams
from services.worker.sampler import Sampler, SamplingRow

EOS = 0


def row(output=(), **params) -> SamplingRow:
    return SamplingRow(SamplingParams(max_tokens=64, **params), prompt_token_ids=[], output_token_ids=list(output))


def assert_counts_match(observed: Counter, probs: dict, total: int) -> None:
    """Each outcome's count lies within 5 standard deviations of its expected count."""
    for outcome, prob in probs.items():
        sigma = math.sqrt(total * prob * (1 - prob))
        assert abs(observed[outcome] - total * prob) < 5 * sigma, (outcome, observed[outcome], total * prob)


def assert_independent_softmax_draws(sampler: Sampler, logits: torch.Tensor, num_pairs: int) -> None:
    """Unseeded draws on one logit row: neighbouring rows of a call, and a row across two calls, are pairs of
    independent draws from the softmax."""
    batch = logits.expand(2 * num_pairs, -1)
    rows = [row(temperature=1.0)] * (2 * num_pairs)
    first, second = sampler(batch, rows).token_ids, sampler(batch, rows).token_ids
    probs = logits[0].double().cpu().softmax(-1).tolist()
    pairs = {(a, b): pa * pb for a, pa in enumerate(probs) for b, pb in enumerate(probs)}
    assert_counts_match(Counter(zip(first[0::2], first[1::2])), pairs, num_pairs)
    assert_counts_match(Counter(zip(first[:num_pairs], second[:num_pairs])), pairs, num_pairs)


def test_unseeded_rows_draw_independently_across_rows_and_calls() -> None:
    torch.manual_seed(5)
    assert_independent_softmax_draws(Sampler(4, [EOS]), torch.tensor([[0.0, 1.0, -0.5, 0.5]]), 6000)


def test_a_temperature_1_batch_draws_from_its_raw_logits_what_it_draws_from_their_fp32_copy() -> None:
    sampler = Sampler(300, [EOS])
    logits = torch.randn(16, 300, generator=torch.Generator().manual_seed(1)) * 4
    rows = [row(output=[1] * i, seed=1000 + i) for i in range(16)]
    want = sampler(logits.bfloat16().float(), rows).token_ids
    assert sampler(logits.bfloat16(), rows).token_ids == want
    # float64 logits are rounded to fp32 first, as on the path with features.
    assert sampler(logits.double(), rows).token_ids == sampler(logits, rows).token_ids
    with_feature = [row(output=[1] * i, seed=1000 + i, top_k=300) for i in range(16)]  # keeps every token
    assert sampler(logits.bfloat16(), with_feature).token_ids == want


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seeded_rows_on_cuda_at_64_rows_of_a_llama3_vocabulary_draw_the_cpu_tokens(dtype: torch.dtype) -> None:
    vocab = 128256
    sampler = Sampler(vocab, [EOS])
    logits = (torch.randn(64, vocab, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)
    plain = [row(output=[7] * (i % 5), seed=i) for i in range(64)]
    mixed = [row(output=[7] * (i % 5), seed=i, temperature=0.8, top_p=0.95) if i % 2 else plain[i] for i in range(64)]
    mixed[3] = row()  # greedy
    for rows in (plain, mixed):
        assert sampler(logits.cuda(), rows).token_ids == sampler(logits, rows).token_ids


@pytest.mark.gpu
def test_unseeded_rows_on_cuda_draw_independently_from_the_softmax() -> None:
    torch.manual_seed(6)
    assert_independent_softmax_draws(Sampler(4, [EOS]), torch.tensor([[0.0, 1.0, -0.5, 0.5]]).cuda(), 6000)
    sampler = Sampler(50, [EOS])
    logits = torch.linspace(-2.0, 2.0, 50).unsqueeze(0)
    out = sampler(logits.cuda().expand(20000, 50), [row(temperature=1.0)] * 20000).token_ids
    probs = logits[0].double().softmax(-1).tolist()
    assert_counts_match(Counter(out), dict(enumerate(probs)), 20000)


def test_warm_up_draws_greedy_rows_as_the_argmax_and_sampled_rows_inside_the_vocabulary() -> None:
    # Zero logits: greedy takes token 0 (first index of the maximum); a draw may be any token.
    tokens = Sampler(300, [EOS]).warm_up(torch.device("cpu"))
    assert len(tokens) == 4
    assert [row[0] for row in tokens[1:3]] == [0, 0]
    assert all(len(row) == 2 and all(0 <= t < 300 for t in row) for row in tokens)
