"""SamplingParams: validation with clear messages (on entry only), protobuf round trips, defaults, fill_context."""

from __future__ import annotations

import pytest
from flashstream.v1 import common_pb2

from services.common.errors import ErrorCode, InvalidArgument
from services.common.sampling import MIN_TEMPERATURE, SamplingParams


def test_defaults_are_greedy_sixteen_tokens_without_logprobs() -> None:
    params = SamplingParams()
    assert (params.max_tokens, params.temperature, params.top_p, params.logprobs) == (16, 0.0, 1.0, None)
    assert params.is_greedy and params.is_reproducible


def test_an_empty_protobuf_gives_the_defaults() -> None:
    assert SamplingParams.from_pb(common_pb2.SamplingParams()) == SamplingParams()


def test_every_field_survives_a_protobuf_round_trip() -> None:
    params = SamplingParams(max_tokens=7, min_tokens=2, temperature=0.5, top_k=40, top_p=0.75, min_p=0.125,
                            repetition_penalty=1.25, presence_penalty=0.5, frequency_penalty=-0.5, seed=1234,
                            stop_token_ids=(5, 9), ignore_eos=True, logprobs=3)
    assert SamplingParams.from_pb(params.to_pb(common_pb2.SamplingParams)) == params


def test_seed_zero_and_logprobs_zero_are_kept_distinct_from_unset() -> None:
    params = SamplingParams(temperature=1.0, seed=0, logprobs=0)
    back = SamplingParams.from_pb(params.to_pb(common_pb2.SamplingParams))
    assert (back.seed, back.logprobs) == (0, 0)
    assert back.is_reproducible and not back.is_greedy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
        ({"max_tokens": -3}, "max_tokens must be at least 1, got -3"),
        ({"min_tokens": 20}, "min_tokens must be between 0 and max_tokens (16), got 20"),
        ({"temperature": -0.1}, "temperature must be 0 (greedy) or in [1e-06, 100], got -0.1"),
        ({"temperature": float("nan")}, "temperature must be 0 (greedy) or in [1e-06, 100], got nan"),
        # float32's smallest subnormal: dividing logits by it overflows them to infinity on the worker
        ({"temperature": 1.401298464324817e-45}, "temperature must be 0 (greedy) or in [1e-06, 100], "
                                                 "got 1.401298464324817e-45"),
        ({"top_k": -1}, "top_k must be 0 (off) or positive, got -1"),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
        ({"min_p": 1.5}, "min_p must be in [0, 1], got 1.5"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be positive, got 0.0"),
        ({"presence_penalty": 3.0}, "presence_penalty must be in [-2, 2], got 3.0"),
        ({"frequency_penalty": -2.5}, "frequency_penalty must be in [-2, 2], got -2.5"),
        ({"stop_token_ids": (3, -1)}, "stop_token_ids must be non-negative, got [3, -1]"),
        ({"logprobs": 21}, "logprobs must be in [0, 20], got 21"),
    ],
)
def test_invalid_values_are_refused_with_a_message_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        SamplingParams(**kwargs).validate()
    assert info.value.message == message
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


def test_later_stages_read_parameters_from_protobuf_without_checking_them_again() -> None:
    # The gateway validated them on entry; a stage past it takes them as sent.
    params = SamplingParams.from_pb(common_pb2.SamplingParams(max_tokens=0, temperature=-1.0, top_p=0.0))
    assert (params.max_tokens, params.temperature, params.top_p) == (0, -1.0, 0.0)


def test_fill_context_travels_as_its_own_field_with_max_tokens_unset() -> None:
    params = SamplingParams(min_tokens=40, temperature=1.0, fill_context=True)
    params.validate()  # min_tokens is checked against the room the prompt leaves, in the tokenizer stage
    pb = params.to_pb(common_pb2.SamplingParams)
    assert (pb.fill_context, pb.HasField("max_tokens"), pb.min_tokens) == (True, False, 40)
    assert SamplingParams.from_pb(pb) == params
    resolved = SamplingParams(max_tokens=30, fill_context=False).to_pb(common_pb2.SamplingParams)
    assert (resolved.fill_context, resolved.max_tokens) == (False, 30)


def test_a_negative_min_tokens_is_refused_when_filling_the_context_too() -> None:
    with pytest.raises(InvalidArgument) as info:
        SamplingParams(min_tokens=-1, fill_context=True).validate()
    assert info.value.message == "min_tokens must be at least 0, got -1"


def test_the_smallest_positive_temperature_survives_the_float32_protobuf_hop() -> None:
    params = SamplingParams(temperature=1e-6, seed=1)
    assert SamplingParams.from_pb(params.to_pb(common_pb2.SamplingParams)).temperature == MIN_TEMPERATURE


def test_top_k_one_counts_as_greedy_and_a_seed_makes_sampling_reproducible() -> None:
    assert SamplingParams(temperature=0.8, top_k=1).is_greedy
    sampled = SamplingParams(temperature=0.8)
    assert not sampled.is_greedy and not sampled.is_reproducible
    assert SamplingParams(temperature=0.8, seed=7).is_reproducible
