"""A plain per-row Python reference of the sampler's semantics, and property tests of the batched sampler
against it on random small batches (random logits, parameters, histories and row orders)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.sampling import SamplingParams
from services.worker.sampler import Sampler, SamplingRow

VOCAB = 12
EOS = (VOCAB - 1,)
# Closer than this, fp32 and float64 may rank two quantities differently; the reference then calls the row ambiguous.
MARGIN = 1e-5


def reference_adjusted(logits: Sequence[float], row: SamplingRow, eos: Sequence[int] = EOS) -> list[float]:
    """Penalties, then min_tokens masking, one token at a time."""
    p = row.params
    seen = set(row.prompt_token_ids) | set(row.output_token_ids)
    counts = Counter(row.output_token_ids)
    out = []
    for token, value in enumerate(logits):
        if token in seen:
            value = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
        value -= p.frequency_penalty * counts[token] + p.presence_penalty * (counts[token] > 0)
        out.append(value)
    if len(row.output_token_ids) < p.min_tokens:
        for token in set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos)):
            out[token] = -math.inf
    return out


def reference_logprobs(adjusted: Sequence[float], params: SamplingParams) -> list[float]:
    temperature = 1.0 if params.is_greedy else params.temperature
    scaled = [v / temperature for v in adjusted]
    top = max(scaled)
    log_total = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_total for v in scaled]


def reference_support(adjusted: Sequence[float], params: SamplingParams) -> tuple[set[int], bool]:
    """The tokens the row can be given, and whether a rounding-sized change could alter that set."""
    finite = sorted(v for v in adjusted if v != -math.inf)
    ambiguous = any(b - a < MARGIN for a, b in zip(finite, finite[1:]))
    if params.is_greedy:
        best = max(adjusted)
        return {adjusted.index(best)}, ambiguous
    logprobs = reference_logprobs(adjusted, params)
    ranked = sorted((t for t in range(len(adjusted)) if adjusted[t] != -math.inf), key=lambda t: -adjusted[t])
    if 0 < params.top_k < len(adjusted):
        kth = adjusted[ranked[params.top_k - 1]] if params.top_k <= len(ranked) else -math.inf
        ranked = [t for t in ranked if adjusted[t] >= kth]
    if params.top_p < 1.0:
        total = sum(math.exp(logprobs[t]) for t in ranked)
        kept, mass = [], 0.0
        for t in ranked:
            if kept and mass >= params.top_p:
                break
            kept.append(t)
            mass += math.exp(logprobs[t]) / total
            ambiguous |= abs(mass - params.top_p) < MARGIN
        ranked = kept
    if params.min_p > 0.0:
        best = max(logprobs[t] for t in ranked)
        ratios = {t: math.exp(logprobs[t] - best) for t in ranked}
        ambiguous |= any(abs(r - params.min_p) < MARGIN for r in ratios.values())
        ranked = [t for t in ranked if ratios[t] >= params.min_p]
    return set(ranked), ambiguous


# Distinct multiples of 1/8: exact in fp32, so only the transforms can introduce rounding.
logit_rows = st.lists(st.integers(-40, 40), min_size=VOCAB, max_size=VOCAB, unique=True).map(
    lambda ints: [i / 8 for i in ints]
)
params_strategy = st.builds(
    SamplingParams,
    max_tokens=st.just(64),
    min_tokens=st.integers(0, 3),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 2, 5, VOCAB + 3]),
    top_p=st.sampled_from([1.0, 0.9, 0.5, 0.2]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
    repetition_penalty=st.sampled_from([1.0, 2.0, 0.5]),
    presence_penalty=st.sampled_from([0.0, 0.5, -0.75]),
    frequency_penalty=st.sampled_from([0.0, 0.25, -1.0]),
    seed=st.none() | st.integers(0, 2**63 - 1),
    stop_token_ids=st.lists(st.integers(0, VOCAB - 1), max_size=2).map(tuple),
    ignore_eos=st.booleans(),
    logprobs=st.none() | st.integers(0, 4),
)
token_lists = st.lists(st.integers(0, VOCAB - 1), max_size=5)
sampling_rows = st.builds(
    SamplingRow, params=params_strategy, prompt_token_ids=token_lists, output_token_ids=token_lists
)
random_batches = st.lists(st.tuples(logit_rows, sampling_rows), min_size=1, max_size=6)
property_test = settings(max_examples=60, deadline=None)


def as_batch(cases: list[tuple[list[float], SamplingRow]]) -> tuple[torch.Tensor, list[SamplingRow]]:
    return torch.tensor([c[0] for c in cases]), [c[1] for c in cases]


@property_test
@given(random_batches, st.integers(0, 2**31))
def test_every_row_of_a_random_batch_gets_a_token_of_its_reference_support(cases, torch_seed):
    logits, rows = as_batch(cases)
    sampler = Sampler(VOCAB, EOS)
    torch.manual_seed(torch_seed)
    out = sampler(logits, rows)
    for (row_logits, row), token in zip(cases, out.token_ids):
        support, ambiguous = reference_support(reference_adjusted(row_logits, row), row.params)
        if not ambiguous:
            assert token in support


@property_test
@given(random_batches)
def test_adjusted_logits_equal_the_reference_row_by_row(cases):
    logits, rows = as_batch(cases)
    got = Sampler(VOCAB, EOS).adjusted_logits(logits, rows)
    expected = torch.tensor([reference_adjusted(c[0], c[1]) for c in cases], dtype=torch.float32)
    # Dyadic logits and penalties: every value is exact, so equality holds bit for bit.
    assert torch.equal(got, expected)


@property_test
@given(random_batches, st.randoms(use_true_random=False))
def test_greedy_and_seeded_rows_get_the_same_token_in_any_batch_order(cases, rng):
    logits, rows = as_batch(cases)
    sampler = Sampler(VOCAB, EOS)
    out = sampler(logits, rows)
    order = list(range(len(rows)))
    rng.shuffle(order)
    shuffled = sampler(logits[order], [rows[i] for i in order])
    for position, i in enumerate(order):
        if rows[i].params.is_reproducible:
            assert shuffled.token_ids[position] == out.token_ids[i]
            assert sampler(logits[i : i + 1], [rows[i]]).token_ids == [out.token_ids[i]]


@property_test
@given(random_batches)
def test_logprobs_equal_the_reference_log_softmax_with_the_best_alternatives_first(cases):
    logits, rows = as_batch(cases)
    out = Sampler(VOCAB, EOS)(logits, rows)
    for (row_logits, row), token, lp in zip(cases, out.token_ids, out.logprobs):
        if row.params.logprobs is None:
            assert lp is None
            continue
        expected = reference_logprobs(reference_adjusted(row_logits, row), row.params)
        assert lp.token_id == token
        assert math.isclose(lp.logprob, expected[token], abs_tol=1e-5)
        assert len(lp.top) == row.params.logprobs
        best_first = sorted(range(VOCAB), key=lambda t: -expected[t])[: row.params.logprobs]
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        for (got_id, got_value), want_id in zip(lp.top, best_first):
            assert math.isclose(got_value, expected[want_id], abs_tol=1e-5)
            assert math.isclose(expected[got_id], expected[want_id], abs_tol=1e-5)


@property_test
@given(random_batches)
def test_support_of_every_row_equals_the_reference_support(cases):
    logits, rows = as_batch(cases)
    allowed = Sampler(VOCAB, EOS).support(logits, rows)
    for (row_logits, row), row_allowed in zip(cases, allowed):
        support, ambiguous = reference_support(reference_adjusted(row_logits, row), row.params)
        if not ambiguous:
            assert set(row_allowed.nonzero().flatten().tolist()) == support
