"""A prompt too long to fit the context whatever its tokens is refused before it is encoded."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.common.sampling import SamplingParams
from services.tokenizer.intake import ModelLimits, TextInput, prepare_batch
from services.tokenizer.tokenizer import TextTokenizer
from tests.unit.tokenizer.model_dirs import build_model_dir


@pytest.mark.parametrize("style", ["llama3", "mistral"])
def test_no_text_longer_than_the_bound_encodes_to_fewer_tokens(tmp_path: Path, style: str):
    tokenizer = TextTokenizer.from_dir(build_model_dir(tmp_path / style, style))
    longest = max(tokenizer.backend.get_vocab(with_added_tokens=True), key=len)
    assert tokenizer.max_chars_per_token == len(longest)
    # The text of the longest piece, repeated, is the best case for characters per token.
    text = tokenizer.decode(tokenizer.encode(longest, add_special_tokens=False)) * 50
    assert len(tokenizer.encode(text, add_special_tokens=False)) >= len(text) / tokenizer.max_chars_per_token


def test_a_prompt_over_the_bound_is_refused_with_its_size_and_one_at_the_bound_is_encoded(tmp_path: Path):
    tokenizer = TextTokenizer.from_dir(build_model_dir(tmp_path / "llama3", "llama3"))
    max_model_len = 64
    limit = tokenizer.max_prompt_chars(max_model_len)
    assert limit == 64 * tokenizer.max_chars_per_token
    sampling = SamplingParams(max_tokens=1)
    over, at = (TextInput("over", sampling, prompt="a" * (limit + 1)), TextInput("at", sampling, prompt="a" * limit))
    refused, encoded = prepare_batch(tokenizer, [over, at], ModelLimits(max_model_len))
    assert isinstance(refused, InvalidArgument)
    assert refused.message == (f"request 'over': the prompt ({limit + 1} characters) cannot fit the model's context "
                               f"of 64 tokens (a token covers at most {tokenizer.max_chars_per_token} characters)")
    assert isinstance(encoded, InvalidArgument) and "exceeds the model's context" in encoded.message  # encoded


def test_a_batch_with_refused_prompts_leaves_nothing_for_the_garbage_collector(tmp_path: Path):
    tokenizer = TextTokenizer.from_dir(build_model_dir(tmp_path / "llama3", "llama3"))
    limit = tokenizer.max_prompt_chars(64)
    sampling = SamplingParams(max_tokens=1)
    batch = [TextInput("over", sampling, prompt="a" * (limit + 1)), TextInput("at", sampling, prompt="a" * limit),
             TextInput("fits", sampling, prompt="a b c")]
    gc.collect()
    gc.disable()  # a collection in between would hide a cycle
    try:
        results = prepare_batch(tokenizer, batch, ModelLimits(64))
        assert [type(r).__name__ for r in results] == ["InvalidArgument", "InvalidArgument", "PreparedRequest"]
        del results, batch
        assert gc.collect() == 0  # the refusals' tracebacks would hold the batch, prompts and all, in a cycle
    finally:
        gc.enable()
