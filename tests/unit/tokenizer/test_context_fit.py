"""The tokenizer stage's one check of a prompt's length against the context, and what fill_context becomes."""

from __future__ import annotations

import pytest

from services.common.errors import ErrorCode, FlashStreamError
from services.common.sampling import SamplingParams
from services.tokenizer.intake import TextInput, fit_context


def _refusal(request: TextInput, num_tokens: int, max_model_len: int) -> tuple[ErrorCode, str]:
    with pytest.raises(FlashStreamError) as info:
        fit_context(request, num_tokens, max_model_len)
    return info.value.code, info.value.message


def test_fill_context_becomes_the_room_the_prompt_leaves_and_is_cleared() -> None:
    request = TextInput("r", SamplingParams(min_tokens=3, temperature=0.5, fill_context=True))
    fit_context(request, 24, 64)
    assert request.sampling == SamplingParams(max_tokens=40, min_tokens=3, temperature=0.5, fill_context=False)


def test_a_prompt_plus_max_tokens_past_the_context_is_refused_and_one_that_exactly_fills_it_passes() -> None:
    assert _refusal(TextInput("r", SamplingParams(max_tokens=41)), 24, 64) == (
        ErrorCode.INVALID_ARGUMENT, "request 'r': prompt (24 tokens) plus max_tokens (41) exceeds the model's context "
                                    "of 64 tokens")
    exact = TextInput("r", SamplingParams(max_tokens=40))
    fit_context(exact, 24, 64)
    assert exact.sampling.max_tokens == 40


def test_filling_a_context_the_prompt_already_fills_or_that_leaves_less_than_min_tokens_is_refused() -> None:
    assert _refusal(TextInput("full", SamplingParams(fill_context=True)), 64, 64) == (
        ErrorCode.INVALID_ARGUMENT, "request 'full': the prompt (64 tokens) leaves no room in the model's context of "
                                    "64 tokens")
    assert _refusal(TextInput("short", SamplingParams(min_tokens=10, fill_context=True)), 60, 64) == (
        ErrorCode.INVALID_ARGUMENT, "request 'short': the prompt (60 tokens) leaves 4 tokens of the model's context "
                                    "of 64 tokens, fewer than min_tokens (10)")


def test_an_empty_prompt_and_a_context_not_known_yet_are_refused() -> None:
    assert _refusal(TextInput("e", SamplingParams()), 0, 64) == (
        ErrorCode.INVALID_ARGUMENT, "request 'e': the prompt is empty")
    assert _refusal(TextInput("u", SamplingParams(fill_context=True)), 5, 0) == (
        ErrorCode.UNAVAILABLE, "request 'u': the model's context length is not known yet; retry shortly")
