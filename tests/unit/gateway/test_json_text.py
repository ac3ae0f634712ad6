"""Client JSON is read in one place, which refuses deep nesting, lone surrogates and endless integers."""

from __future__ import annotations

import pytest

from gateway import json_text
from gateway.errors import RequestError


def _refusal(text: str | bytes) -> tuple[str, str]:
    with pytest.raises(RequestError) as info:
        json_text.loads(text)
    return info.value.error_code, info.value.message


def test_nesting_at_the_limit_parses_and_one_level_deeper_is_refused():
    depth = json_text.MAX_JSON_DEPTH
    assert json_text.loads(b"[" * depth + b"]" * depth) is not None
    assert _refusal(b"[" * (depth + 1) + b"]" * (depth + 1)) == (
        "too_deep", "the request body is nested deeper than 64 levels")


def test_nesting_deeper_than_the_parsers_recursion_is_a_400_not_a_recursion_error():
    assert _refusal(b'{"a":' * 5000 + b"1" + b"}" * 5000)[0] == "too_deep"


def test_a_lone_surrogate_anywhere_is_refused_and_a_surrogate_pair_is_one_character():
    assert json_text.loads(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001F600"}
    message = "the request body holds a lone UTF-16 surrogate, which is not valid Unicode text"
    for text in (b'{"prompt": "\\ud800"}', b'{"stop": ["a\\uDC00"]}', b'{"\\udfff": 1}', '"\\ud800"'):
        assert _refusal(text) == ("invalid_unicode", message)


def test_surrogates_encoded_as_utf8_bytes_are_not_valid_json():
    assert _refusal(b'{"prompt": "\xed\xa0\x80"}')[0] == "invalid_json"


def test_integers_longer_than_forty_digits_are_refused():
    assert json_text.loads(b"1" + b"0" * 39) == 10**39
    assert _refusal(b"1" + b"0" * 40) == ("invalid_json", "the request body is not valid JSON: an integer of 41 digits")
    assert _refusal(b"9" * 5000)[0] == "invalid_json"


def test_a_schema_given_as_text_is_refused_naming_its_field():
    with pytest.raises(RequestError) as info:
        json_text.loads("[" * 100 + "]" * 100, "'guided_json'", "guided_json")
    assert (info.value.param, info.value.message) == ("guided_json", "'guided_json' is nested deeper than 64 levels")
