"""Draw distributions, seeded rows, batch mixing, and the same batch on CUDA: what must not depend on the batch
or the device."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from services.common.sampling import SamplingParams
from services.worker.sampler import Sampler, SamplingRow

VOCAB = 50
EOS = 0


def row(prompt=(), output=(), **params) -> SamplingRow:
    return SamplingRow(
        params=SamplingParams(max_tokens=64, **params), prompt_token_ids=list(prompt), output_token_ids=list(output)
    )


def fixed_logits(num_rows: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, VOCAB, generator=generator) * 2  # [num_rows, VOCAB]


def mixed_rows() -> list[SamplingRow]:
    """One row of each kind a production batch mixes."""
    return [
        row(),  # plain greedy
        row(temperature=0.8, seed=11, top_p=0.9),
        row(output=[3, 3, 4], repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25),  # greedy
        row(temperature=1.0),  # unseeded
        row(temperature=1.2, seed=2**62 + 5, top_k=7, min_p=0.05, logprobs=4),
        row(output=[1], min_tokens=3, temperature=0.7, seed=3, stop_token_ids=(5,)),
        row(prompt=[9, 10], output=[9], temperature=0.5, top_k=1, logprobs=2, repetition_penalty=2.0),  # greedy
        row(temperature=0.9, top_p=0.5, min_p=0.1),  # unseeded
    ]


def test_seeded_row_gets_the_same_token_at_any_position_and_with_any_batch_mates():
    sampler = Sampler(VOCAB, [EOS])
    mates = fixed_logits(6, seed=1)
    mate_rows = [row(temperature=1.0), row(temperature=0.5, seed=99), row(), row(temperature=2.0, top_p=0.8)] * 2
    for seed in range(40):
        logits = fixed_logits(1, seed=100 + seed)
        seeded = row(output=[2] * (seed % 4), temperature=1.0, seed=seed)
        alone = sampler(logits, [seeded]).token_ids[0]
        for position in (0, 3, 6):
            batch = torch.cat([mates[:position], logits, mates[position:]])
            rows = mate_rows[:position] + [seeded] + mate_rows[position:6]
            assert sampler(batch, rows).token_ids[position] == alone


def test_seeded_rows_repeat_across_calls_whatever_the_default_generator_did():
    sampler = Sampler(VOCAB, [EOS])
    logits = fixed_logits(8)
    rows = [row(temperature=1.0, seed=s) for s in range(8)]
    first = sampler(logits, rows).token_ids
    torch.manual_seed(12345)
    torch.rand(1000)
    assert sampler(logits, rows).token_ids == first


def test_different_seeds_and_positions_draw_different_tokens():
    sampler = Sampler(VOCAB, [EOS])
    flat = torch.zeros(1, VOCAB)  # uniform: every token equally likely, so draws spread
    by_seed = {sampler(flat, [row(temperature=1.0, seed=s)]).token_ids[0] for s in range(40)}
    by_position = {sampler(flat, [row(output=[1] * n, temperature=1.0, seed=7)]).token_ids[0] for n in range(40)}
    # 40 uniform draws over 50 tokens hit fewer than 15 distinct tokens with probability below 1e-9.
    assert len(by_seed) >= 15 and len(by_position) >= 15


def assert_frequencies_match(token_ids: list[int], probs: list[float]) -> None:
    """Each token's count lies within 5 standard deviations of its expected count."""
    counts = Counter(token_ids)
    for token, prob in enumerate(probs):
        sigma = math.sqrt(len(token_ids) * prob * (1 - prob))
        assert abs(counts[token] - len(token_ids) * prob) < 5 * sigma


def test_unseeded_draws_follow_the_temperature_scaled_softmax():
    sampler = Sampler(VOCAB, [EOS])
    logits = torch.linspace(-2.0, 2.0, VOCAB).unsqueeze(0)
    torch.manual_seed(99)
    out = sampler(logits.expand(20000, VOCAB), [row(temperature=1.5)] * 20000)
    assert_frequencies_match(out.token_ids, (logits[0] / 1.5).softmax(-1).tolist())


def test_seeded_draws_over_many_seeds_follow_the_softmax():
    sampler = Sampler(VOCAB, [EOS])
    logits = torch.linspace(-2.0, 2.0, VOCAB).unsqueeze(0)
    out = sampler(logits.expand(4000, VOCAB), [row(temperature=1.0, seed=s) for s in range(4000)])
    assert_frequencies_match(out.token_ids, logits[0].softmax(-1).tolist())


def test_mixed_batch_gives_each_reproducible_row_what_it_gets_alone():
    sampler = Sampler(VOCAB, [EOS])
    logits = fixed_logits(8, seed=3)
    rows = mixed_rows()
    torch.manual_seed(0)
    batch = sampler(logits, rows)
    for i, sampling_row in enumerate(rows):
        alone = sampler(logits[i : i + 1], [sampling_row])
        if sampling_row.params.is_reproducible:
            assert batch.token_ids[i] == alone.token_ids[0]
        if sampling_row.params.logprobs is not None:
            got, want = batch.logprobs[i], alone.logprobs[0]
            assert [t for t, _ in got.top] == [t for t, _ in want.top]
            assert [v for _, v in got.top] == pytest.approx([v for _, v in want.top], abs=1e-6)
        else:
            assert batch.logprobs[i] is None
    adjusted = sampler.adjusted_logits(logits, rows)
    greedy_rows = [i for i, r in enumerate(rows) if r.params.is_greedy]
    assert [batch.token_ids[i] for i in greedy_rows] == adjusted[greedy_rows].argmax(-1).tolist()
    assert batch.token_ids[5] != 5 and batch.token_ids[5] != EOS  # min_tokens not reached


@pytest.mark.gpu
def test_mixed_batch_on_cuda_gives_the_cpu_tokens_for_greedy_and_seeded_rows():
    sampler = Sampler(VOCAB, [EOS])
    logits = fixed_logits(8, seed=3)
    rows = mixed_rows()
    cpu = sampler(logits, rows)
    reproducible = [i for i, r in enumerate(rows) if r.params.is_reproducible]
    for dtype in (torch.float32, torch.bfloat16):
        on_cpu = sampler(logits.to(dtype), rows) if dtype != torch.float32 else cpu
        gpu = sampler(logits.to(dtype).cuda(), rows)
        assert [gpu.token_ids[i] for i in reproducible] == [on_cpu.token_ids[i] for i in reproducible]
        for i, sampling_row in enumerate(rows):
            if sampling_row.params.logprobs is not None:
                assert gpu.logprobs[i].logprob == pytest.approx(on_cpu.logprobs[i].logprob, abs=1e-5)
                assert [t for t, _ in gpu.logprobs[i].top] == [t for t, _ in on_cpu.logprobs[i].top]
    # Past building the step's small index tensors, nothing waits for the GPU until to_host().
    cuda_logits = logits.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_device = sampler.sample(cuda_logits, rows)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    from_device = on_device.to_host().token_ids
    assert [from_device[i] for i in reproducible] == [cpu.token_ids[i] for i in reproducible]
    many = fixed_logits(256, seed=4)
    many_rows = [row(temperature=1.0, seed=s, top_p=0.95) for s in range(256)]
    assert sampler(many.cuda(), many_rows).token_ids == sampler(many, many_rows).token_ids
