"""OpenAI embeddings JSON: every input form, the options and extensions, errors naming the field, base64."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from gateway.embeddings import EmbeddingRequest, EmbeddingResult
from gateway.errors import RequestError
from gateway.openai_embeddings import embeddings_response, parse_embeddings_request


def test_each_input_form_becomes_texts_or_token_ids() -> None:
    assert parse_embeddings_request({"input": "hi"})[0].texts == ("hi",)
    assert parse_embeddings_request({"input": ["a", "b"]})[0].texts == ("a", "b")
    assert parse_embeddings_request({"input": [1, 2, 3]})[0].token_ids == ((1, 2, 3),)
    assert parse_embeddings_request({"input": [[1, 2], [3]]})[0].token_ids == ((1, 2), (3,))


def test_options_and_extensions_reach_the_request() -> None:
    request, encoding = parse_embeddings_request({
        "model": "m", "input": "x", "encoding_format": "base64", "dimensions": 64, "truncate": True,
        "normalize": False, "cache": False, "user": "someone"})
    assert request == EmbeddingRequest("m", ("x",), (), normalize=False, dimensions=64, truncate=True,
                                       use_cache=False)
    assert encoding == "base64"
    default, encoding = parse_embeddings_request({"input": "x"})
    assert (default.normalize, default.dimensions, default.truncate, default.use_cache, encoding) == (
        None, 0, False, True, "float")


@pytest.mark.parametrize(("body", "param", "message"), [
    ({}, "input", "'input' is required"),
    ({"input": []}, "input", "'input' must not be empty"),
    ({"input": ["a", 1]}, "input", "'input' must be a string, an array of strings"),
    ({"input": [[1], []]}, "input", "'input' must be a string, an array of strings"),
    ({"input": [True]}, "input", "'input' must be a string"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "must be one of float, base64"),
    ({"input": "x", "dimensions": 0}, "dimensions", "'dimensions' must be at least 1, got 0"),
    ({"input": "x", "dimensions": "8"}, "dimensions", "'dimensions' must be an integer"),
])
def test_bad_requests_name_the_field(body: dict, param: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as err:
        parse_embeddings_request(body)
    assert err.value.param == param


def test_response_carries_index_cached_usage_and_base64_float32() -> None:
    result = EmbeddingResult("m", [np.array([0.5, -1.0], np.float32), np.array([2.0, 0.25], np.float32)],
                             [True, False], 7)
    body = embeddings_response(result, "float")
    assert body == {"object": "list", "model": "m", "usage": {"prompt_tokens": 7, "total_tokens": 7}, "data": [
        {"object": "embedding", "index": 0, "embedding": [0.5, -1.0], "cached": True},
        {"object": "embedding", "index": 1, "embedding": [2.0, 0.25], "cached": False}]}
    packed = embeddings_response(result, "base64")["data"][1]["embedding"]
    assert np.frombuffer(base64.b64decode(packed), dtype="<f4").tolist() == [2.0, 0.25]
