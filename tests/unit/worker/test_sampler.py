"""The sampler on small fixed logits: greedy, penalties, min_tokens, truncation, logprobs and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from services.common.sampling import SamplingParams
from services.worker.sampler import Sampler, SamplingRow

VOCAB = 10
EOS = 9
LOGITS = [0.5, 2.0, -1.0, 1.5, -0.5, 0.0, 3.0, -2.0, 1.0, 2.5]  # best first: 6, 9, 1, 3, 8, 0, 5, 4, 2, 7


def row(prompt=(), output=(), **params) -> SamplingRow:
    return SamplingRow(
        params=SamplingParams(max_tokens=64, **params), prompt_token_ids=list(prompt), output_token_ids=list(output)
    )


def sample_support(sampler: Sampler, logits: list[float], sampling_row: SamplingRow, num_draws: int = 2000) -> set[int]:
    """Tokens drawn for num_draws copies of one unseeded row, in one batch, from a fixed generator; checked
    against the sampler's own statement of the row's support."""
    torch.manual_seed(1234)
    out = sampler(torch.tensor([logits] * num_draws), [sampling_row] * num_draws)
    allowed = sampler.support(torch.tensor([logits]), [sampling_row])[0]
    assert set(out.token_ids) == set(allowed.nonzero().flatten().tolist())
    return set(out.token_ids)


def probs(logits: list[float], temperature: float = 1.0) -> list[float]:
    weights = [math.exp(v / temperature) for v in logits]
    return [w / sum(weights) for w in weights]


def test_all_greedy_batch_takes_the_argmax_of_every_row_in_any_float_dtype():
    sampler = Sampler(VOCAB, [EOS])
    logits = torch.tensor([LOGITS, LOGITS[::-1], [0.0] * 9 + [0.25]])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = sampler(logits.to(dtype), [row()] * 3)
        assert out.token_ids == [6, 3, 9]
        assert out.logprobs == [None, None, None]


def test_top_k_one_gives_the_argmax_whatever_the_temperature_and_seed():
    sampler = Sampler(VOCAB, [EOS])
    logits = torch.tensor([LOGITS, LOGITS[::-1]])
    greedy = sampler(logits, [row(), row()]).token_ids
    for temperature in (0.3, 1.0, 5.0):
        rows = [row(temperature=temperature, top_k=1), row(temperature=temperature, top_k=1, seed=7, top_p=0.5)]
        assert sampler(logits, rows).token_ids == greedy == [6, 3]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_prompt_and_output_tokens():
    sampler = Sampler(VOCAB, [EOS])
    sampling_row = row(prompt=[1, 2, 2], output=[3, 4], repetition_penalty=2.0)
    got = sampler.adjusted_logits(torch.tensor([LOGITS]), [sampling_row])
    expected = list(LOGITS)
    expected[1], expected[3] = 2.0 / 2, 1.5 / 2  # positive: divided
    expected[2], expected[4] = -1.0 * 2, -0.5 * 2  # negative: multiplied
    assert got[0].tolist() == expected


def test_frequency_and_presence_penalties_subtract_per_occurrence_and_once_from_output_tokens_only():
    sampler = Sampler(VOCAB, [EOS])
    sampling_row = row(prompt=[0, 5], output=[3, 3, 3, 8], frequency_penalty=0.25, presence_penalty=0.5)
    got = sampler.adjusted_logits(torch.tensor([LOGITS]), [sampling_row])
    expected = list(LOGITS)
    expected[3] = 1.5 - 3 * 0.25 - 0.5
    expected[8] = 1.0 - 1 * 0.25 - 0.5
    assert got[0].tolist() == expected  # prompt tokens 0 and 5 untouched


def test_logit_bias_is_added_to_its_tokens_of_its_own_row_only():
    sampler = Sampler(VOCAB, [EOS])
    biased = row(logit_bias=((2, 5.0), (6, -100.0)))
    got = sampler.adjusted_logits(torch.tensor([LOGITS, LOGITS]), [biased, row()])
    expected = list(LOGITS)
    expected[2], expected[6] = -1.0 + 5.0, 3.0 - 100.0
    assert got[0].tolist() == expected
    assert got[1].tolist() == LOGITS
    assert sampler(torch.tensor([LOGITS, LOGITS]), [biased, row()]).token_ids == [2, 6]


def test_logit_bias_on_a_token_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="logit_bias names token 10"):
        Sampler(VOCAB, [EOS])(torch.tensor([LOGITS]), [row(logit_bias=((10, 1.0),))])


def test_negative_presence_and_frequency_penalties_raise_generated_tokens():
    sampler = Sampler(VOCAB, [EOS])
    sampling_row = row(output=[7, 7, 7], frequency_penalty=-2.0, presence_penalty=-1.0)
    got = sampler.adjusted_logits(torch.tensor([LOGITS]), [sampling_row])
    expected = list(LOGITS)
    expected[7] = -2.0 + 3 * 2.0 + 1.0
    assert got[0].tolist() == expected  # 5.0: now above token 6's 3.0
    assert sampler(torch.tensor([LOGITS]), [sampling_row]).token_ids == [7]


def test_token_ids_may_come_as_lists_tuples_numpy_arrays_or_cpu_tensors():
    sampler = Sampler(VOCAB, [EOS])
    params = SamplingParams(max_tokens=64, repetition_penalty=2.0, frequency_penalty=0.25)
    as_lists = [SamplingRow(params, [1, 2], [3, 3]), SamplingRow(params, [4], [5])]
    mixed = [SamplingRow(params, (1, 2), np.array([3, 3])), SamplingRow(params, torch.tensor([4]), [5])]
    logits = torch.tensor([LOGITS, LOGITS])
    expected = sampler.adjusted_logits(logits, as_lists)
    assert torch.equal(sampler.adjusted_logits(logits, mixed), expected)
    assert expected[0, 3].item() == 1.5 / 2 - 2 * 0.25 and expected[1, 4].item() == -0.5 * 2


def test_penalties_of_one_row_leave_its_batch_mates_untouched():
    sampler = Sampler(VOCAB, [EOS])
    logits = torch.tensor([LOGITS, LOGITS, LOGITS])
    penalised = row(output=[6, 6], prompt=[1], repetition_penalty=2.0, frequency_penalty=1.0)
    rows = [row(output=[6]), penalised, row(output=[6])]
    got = sampler.adjusted_logits(logits, rows)
    assert got[0].tolist() == LOGITS and got[2].tolist() == LOGITS
    assert got[1, 6].item() == 3.0 / 2 - 2 * 1.0 and got[1, 1].item() == 1.0
    # The penalty moves the penalised greedy row off token 6 onto 9; its batch-mates keep 6.
    assert sampler(logits, rows).token_ids == [6, 9, 6]


def test_min_tokens_masks_eos_and_stop_ids_until_reached_and_not_after():
    sampler = Sampler(VOCAB, [EOS])
    logits = torch.tensor([LOGITS] * 3)
    rows = [row(output=[], min_tokens=2, stop_token_ids=(6,)), row(output=[0], min_tokens=2, stop_token_ids=(6,)),
            row(output=[0, 1], min_tokens=2, stop_token_ids=(6,))]
    got = sampler.adjusted_logits(logits, rows)
    for i in (0, 1):
        assert got[i, EOS].item() == -math.inf and got[i, 6].item() == -math.inf
        unmasked = [t for t in range(VOCAB) if t not in (6, EOS)]
        assert got[i, unmasked].tolist() == [LOGITS[t] for t in unmasked]
    assert got[2].tolist() == LOGITS
    assert sampler(logits, rows).token_ids == [1, 1, 6]


def test_ignore_eos_leaves_eos_unmasked_but_still_masks_stop_ids_under_min_tokens():
    sampler = Sampler(VOCAB, [EOS, 0])
    got = sampler.adjusted_logits(torch.tensor([LOGITS]), [row(min_tokens=1, ignore_eos=True, stop_token_ids=(6,))])
    expected = list(LOGITS)
    expected[6] = -math.inf
    assert got[0].tolist() == expected
    masked = sampler.adjusted_logits(torch.tensor([LOGITS]), [row(min_tokens=1, stop_token_ids=(6,))])
    assert [t for t, v in enumerate(masked[0].tolist()) if v == -math.inf] == [0, 6, EOS]


def test_stop_ids_outside_the_vocabulary_are_ignored_by_min_tokens():
    sampler = Sampler(VOCAB, [EOS])
    sampling_row = row(min_tokens=1, ignore_eos=True, stop_token_ids=(VOCAB + 5,))
    got = sampler.adjusted_logits(torch.tensor([LOGITS]), [sampling_row])
    assert got[0].tolist() == LOGITS


def test_top_k_samples_exactly_the_k_best_tokens():
    sampler = Sampler(VOCAB, [EOS])
    assert sample_support(sampler, LOGITS, row(temperature=2.0, top_k=3)) == {6, 9, 1}


def test_top_k_keeps_tokens_tied_with_the_kth_logit():
    sampler = Sampler(VOCAB, [EOS])
    tied = [0.0, 1.0, 1.0, 1.0, 2.0, 0.5, -1.0, 0.0, 0.0, 0.0]
    assert sample_support(sampler, tied, row(temperature=2.0, top_k=2)) == {1, 2, 3, 4}


def test_top_p_samples_exactly_the_smallest_best_set_reaching_p():
    sampler = Sampler(VOCAB, [EOS])
    p = probs(LOGITS, temperature=2.0)
    # Best first: 6, 9, 1, 3, ...; the first three hold less than 0.65, the first four more.
    assert sum(p[t] for t in (6, 9, 1)) < 0.65 < sum(p[t] for t in (6, 9, 1, 3))
    assert sample_support(sampler, LOGITS, row(temperature=2.0, top_p=0.65)) == {6, 9, 1, 3}
    assert sample_support(sampler, LOGITS, row(temperature=2.0, top_p=0.05)) == {6}


def test_top_p_renormalises_over_the_top_k_survivors():
    sampler = Sampler(VOCAB, [EOS])
    p = probs(LOGITS)
    top3 = sum(p[t] for t in (6, 9, 1))
    # Tokens 6 and 9 hold less than 0.8 of the whole vocabulary's mass but more than 0.8 of the top 3's.
    assert p[6] + p[9] < 0.8 < (p[6] + p[9]) / top3
    assert sample_support(sampler, LOGITS, row(temperature=1.0, top_k=3, top_p=0.8)) == {6, 9}
    assert sample_support(sampler, LOGITS, row(temperature=1.0, top_p=0.8)) == {6, 9, 1, 3}


def test_min_p_samples_exactly_the_tokens_at_least_min_p_times_as_likely_as_the_best():
    sampler = Sampler(VOCAB, [EOS])
    p = probs(LOGITS, temperature=1.5)
    expected = {t for t in range(VOCAB) if p[t] >= 0.3 * max(p)}
    assert expected == {6, 9, 1, 3}
    assert sample_support(sampler, LOGITS, row(temperature=1.5, min_p=0.3)) == expected


def test_min_p_of_one_keeps_only_the_best_tokens_ties_included():
    sampler = Sampler(VOCAB, [EOS])
    tied = [0.0, 1.0, 2.0, 2.0, 1.5, 0.5, -1.0, 0.0, 0.0, 0.0]
    assert sample_support(sampler, tied, row(temperature=1.0, min_p=1.0)) == {2, 3}


def test_top_k_with_a_top_p_that_does_not_bind_keeps_exactly_the_k_best():
    sampler = Sampler(VOCAB, [EOS])
    assert sample_support(sampler, LOGITS, row(temperature=2.0, top_k=3, top_p=0.99)) == {6, 9, 1}
    assert sample_support(sampler, LOGITS, row(temperature=2.0, top_k=4, min_p=0.01)) == {6, 9, 1, 3}


def test_top_k_row_keeps_k_tokens_when_a_dominant_token_fills_the_mass_and_a_batch_mate_uses_top_p():
    sampler = Sampler(VOCAB, [EOS])
    dominant = [40.0] + [float(i) for i in range(1, VOCAB)]  # token 0 holds all but ~1e-13 of the mass
    rows = [row(temperature=1.0, top_k=4), row(temperature=1.0, top_p=0.5)]
    allowed = sampler.support(torch.tensor([dominant, LOGITS]), rows)
    assert allowed[0].nonzero().flatten().tolist() == [0, 7, 8, 9]
    assert allowed[1].nonzero().flatten().tolist() == [6, 9]


def test_logprobs_are_the_log_softmax_after_penalties_and_temperature_before_truncation():
    sampler = Sampler(VOCAB, [EOS])
    sampling_row = row(output=[6], temperature=2.0, top_k=2, presence_penalty=0.75, logprobs=3, seed=5)
    out = sampler(torch.tensor([LOGITS]), [sampling_row])
    adjusted = list(LOGITS)
    adjusted[6] -= 0.75
    expected = torch.tensor(adjusted).div(2.0).log_softmax(-1).tolist()
    lp = out.logprobs[0]
    assert lp.token_id == out.token_ids[0] in (6, 9)
    assert lp.logprob == pytest.approx(expected[lp.token_id], abs=1e-6)
    assert [t for t, _ in lp.top] == [9, 6, 1]  # 6 fell behind 9 through the presence penalty
    assert [v for _, v in lp.top] == pytest.approx([expected[9], expected[6], expected[1]], abs=1e-6)
    assert all(math.isfinite(v) for v in expected)  # tokens outside the top 2 keep their logprob


def test_greedy_rows_report_logprobs_at_temperature_one_and_zero_alternatives_on_request():
    sampler = Sampler(VOCAB, [EOS])
    out = sampler(torch.tensor([LOGITS, LOGITS]), [row(logprobs=2), row(temperature=3.0, top_k=1, logprobs=0)])
    expected = torch.tensor(LOGITS).log_softmax(-1).tolist()
    assert out.token_ids == [6, 6]
    assert out.logprobs[0].logprob == pytest.approx(expected[6], abs=1e-6)
    assert out.logprobs[0].top == [(6, pytest.approx(expected[6], abs=1e-6)), (9, pytest.approx(expected[9], abs=1e-6))]
    assert out.logprobs[1].logprob == pytest.approx(expected[6], abs=1e-6) and out.logprobs[1].top == []


def test_sample_keeps_the_tokens_on_the_device_until_to_host():
    sampler = Sampler(VOCAB, [EOS])
    logits = torch.tensor([LOGITS, LOGITS[::-1]])
    rows = [row(temperature=0.7, seed=1, logprobs=2), row()]
    on_device = sampler.sample(logits, rows)
    assert on_device.token_ids.dtype == torch.int64 and on_device.token_ids.device == logits.device
    host = on_device.to_host()
    assert host.token_ids == on_device.token_ids.tolist() == sampler(logits, rows).token_ids
    assert host.token_ids[1] == 3 and host.logprobs[1] is None and len(host.logprobs[0].top) == 2


def test_non_contiguous_logits_give_the_same_tokens_as_contiguous_ones():
    sampler = Sampler(VOCAB, [EOS])
    logits = torch.tensor([LOGITS, LOGITS[::-1]])
    rows = [row(min_tokens=1, stop_token_ids=(6,), presence_penalty=0.5, output=[9]), row(temperature=1.0, seed=3)]
    transposed = logits.t().contiguous().t()  # same values, column-major strides
    assert sampler(transposed, rows) == sampler(logits, rows)
    assert torch.equal(sampler.adjusted_logits(transposed, rows), sampler.adjusted_logits(logits, rows))


def test_empty_batch_gives_empty_output():
    out = Sampler(VOCAB, [EOS])(torch.empty(0, VOCAB), [])
    assert out.token_ids == [] and out.logprobs == []


def test_bad_input_raises_value_error_with_a_message():
    sampler = Sampler(VOCAB, [EOS])
    with pytest.raises(ValueError, match="2 rows but 1 sampling rows"):
        sampler(torch.tensor([LOGITS, LOGITS]), [row()])
    with pytest.raises(ValueError, match=r"logits must be \[num_rows, 10\]"):
        sampler(torch.zeros(1, VOCAB + 1), [row()])
    with pytest.raises(ValueError, match="floating point"):
        sampler(torch.zeros(1, VOCAB, dtype=torch.int64), [row()])
    with pytest.raises(ValueError, match="prompt_token_ids hold ids outside"):
        sampler(torch.tensor([LOGITS]), [row(prompt=[3, VOCAB], repetition_penalty=1.5)])
    with pytest.raises(ValueError, match="eos_token_ids"):
        Sampler(VOCAB, [VOCAB])
