"""The runner skips the sampler only for rows whose sampled token is the argmax of the raw logits."""

from __future__ import annotations

import itertools

import torch

from services.common.sampling import SamplingParams
from services.worker.executors import plain_greedy
from services.worker.sampling.batch import SamplingBatch
from services.worker.sampling.types import SamplingRow
from services.worker.sequences import SeqState

VOCAB, EOS = 50, (2,)


def _state(params: SamplingParams, num_output: int) -> SeqState:
    prompt = [5, 6, 7]
    return SeqState(1, prompt + [9] * num_output, len(prompt), params, [0], len(prompt) + num_output)


def _sampler_batch_is_plain_greedy(state: SeqState) -> bool:
    row = SamplingRow(state.sampling, state.token_ids[: state.num_prompt_tokens],
                      state.token_ids[state.num_prompt_tokens :])
    return SamplingBatch.build([row], VOCAB, EOS, torch.device("cpu")).is_plain_greedy


def test_plain_greedy_rows_are_exactly_those_the_sampler_answers_with_one_argmax() -> None:
    variants = {
        "temperature": [0.0, 0.7],
        "top_k": [0, 1],
        "repetition_penalty": [1.0, 1.2],
        "presence_penalty": [0.0, 0.5],
        "frequency_penalty": [0.0, -0.3],
        "logprobs": [None, 0, 3],
        "min_tokens": [0, 2],
        "seed": [None, 11],
    }
    checked = 0
    for values in itertools.product(*variants.values()):
        params = SamplingParams(max_tokens=8, **dict(zip(variants, values)))
        for num_output in (0, 1, 2, 5):
            state = _state(params, num_output)
            assert plain_greedy(state) == _sampler_batch_is_plain_greedy(state), (params, num_output)
            checked += 1
    assert checked == 4 * 2**7 * 3


def test_min_tokens_counts_only_generated_tokens() -> None:
    params = SamplingParams(max_tokens=8, min_tokens=2)
    assert not plain_greedy(_state(params, 1))
    assert plain_greedy(_state(params, 2))
