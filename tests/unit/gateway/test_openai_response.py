"""Gateway events → OpenAI JSON: finish reasons, usage, chunks, and status codes of errors."""

from __future__ import annotations

import json

import pytest

from gateway.errors import ModelNotFound, PayloadTooLarge
from gateway.openai_response import ResponseBuilder, combined_usage, json_bytes, openai_finish_reason, usage_json
from gateway.schema import Finished, TextDelta, TokenLogprob, TopLogprob, Usage
from services.common.finish_reason import FinishReason
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FlashStreamError,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.common.openai_errors import error_response


@pytest.mark.parametrize(("reason", "openai"), [
    (FinishReason.EOS, "stop"), (FinishReason.STOP, "stop"), (FinishReason.STOP_STRING, "stop"),
    (FinishReason.LENGTH, "length"), (FinishReason.ABORT, "abort"),
])
def test_finish_reasons_map_to_openai(reason: FinishReason, openai: str) -> None:
    assert openai_finish_reason(reason) == openai


@pytest.mark.parametrize(("exc", "status", "type_", "code", "headers"), [
    (InvalidArgument("bad"), 400, "invalid_request_error", "invalid_value", {}),
    (PayloadTooLarge("big"), 413, "invalid_request_error", "request_too_large", {}),
    (ModelNotFound("no such model"), 404, "invalid_request_error", "model_not_found", {}),
    (Unauthenticated("who"), 401, "invalid_request_error", "invalid_api_key", {}),
    (FailedPrecondition("not set up"), 409, "invalid_request_error", "failed_precondition", {}),
    (FailedPrecondition("off", "kernel_profile_off"), 409, "invalid_request_error", "kernel_profile_off", {}),
    (ResourceExhausted("full"), 429, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": "1"}),
    (Unavailable("down"), 503, "server_error", "service_unavailable", {"Retry-After": "1"}),
    (DeadlineExceeded("late"), 504, "server_error", "timeout", {}),
    (FlashStreamError("boom"), 500, "server_error", "internal_error", {}),
])
def test_error_codes_map_to_http_status_and_openai_error(
    exc: FlashStreamError, status: int, type_: str, code: str, headers: dict[str, str]
) -> None:
    param = "model" if isinstance(exc, ModelNotFound) else None
    assert error_response(exc) == (
        status, {"error": {"message": exc.message, "type": type_, "param": param, "code": code}}, headers)


def test_usage_counts_total_and_cached_tokens() -> None:
    assert usage_json(Usage(prompt_tokens=10, completion_tokens=4, cached_tokens=8)) == {
        "prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 8}}


def test_full_completion_joins_text_and_logprobs_with_offsets() -> None:
    builder = ResponseBuilder("cmpl-1", "m", 100, chat=False, logprobs=True)
    deltas = [
        TextDelta("ab", (1,), (TokenLogprob(1, -0.1, "ab", (TopLogprob(2, -3.0, "x"),)),)),
        TextDelta("c", (3,), (TokenLogprob(3, -0.2, "c"),)),
    ]
    done = Finished(FinishReason.LENGTH, Usage(3, 2, 0))
    body = builder.full([builder.choice(deltas, done)], done.usage)
    assert body == {
        "id": "cmpl-1", "object": "text_completion", "created": 100, "model": "m",
        "choices": [{"index": 0, "text": "abc", "finish_reason": "length", "logprobs": {
            "tokens": ["ab", "c"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{"x": -3.0}, {}],
            "text_offset": [0, 2]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                  "prompt_tokens_details": {"cached_tokens": 0}},
    }


def test_text_offsets_and_bytes_follow_the_tokens_bytes_when_a_character_spans_several_tokens() -> None:
    # "你" is three byte-fallback tokens (each shown as U+FFFD), then " a" is one token whose leading space a
    # decoder strips when the token is decoded alone.
    pieces = [(b"\xe4", "\ufffd"), (b"\xbd", "\ufffd"), (b"\xa0", "\ufffd"), (b" a", " a"), (b"b", "b")]
    items = tuple(TokenLogprob(i, -0.5, text, (), raw) for i, (raw, text) in enumerate(pieces))
    completion = ResponseBuilder("cmpl-1", "m", 1, chat=False, logprobs=True)
    done = Finished(FinishReason.LENGTH, Usage(1, 5, 0))
    logprobs = completion.choice([TextDelta("你 ab", tuple(range(5)), items)], done)["logprobs"]
    assert logprobs["text_offset"] == [0, 0, 0, 1, 3]
    chat = ResponseBuilder("chatcmpl-1", "m", 1, chat=True, logprobs=True)
    content = chat.choice([TextDelta("你 ab", tuple(range(5)), items)], done)["logprobs"]["content"]
    assert [c["bytes"] for c in content] == [[0xE4], [0xBD], [0xA0], [0x20, 0x61], [0x62]]


def test_a_token_that_breaks_off_an_unfinished_character_starts_after_its_replacement_character() -> None:
    # b"\xe4\xbd" is an unfinished "你"; "a" cannot continue it, so the text is U+FFFD then "a" and "a" is at 1.
    # Then b"\xe4" alone, and a token whose first byte finishes that character's second byte but not the third.
    pieces = [(b"\xe4", "\ufffd"), (b"\xbd", "\ufffd"), (b"a", "a"), (b"\xe4", "\ufffd"), (b"\xbdb", "\ufffdb"),
              (b"\xff", "\ufffd"), (b"c", "c")]
    items = tuple(TokenLogprob(i, -0.5, text, (), raw) for i, (raw, text) in enumerate(pieces))
    text = b"".join(raw for raw, _ in pieces).decode("utf-8", "replace")
    assert text == "\ufffda\ufffdb\ufffdc"
    completion = ResponseBuilder("cmpl-1", "m", 1, chat=False, logprobs=True)
    done = Finished(FinishReason.LENGTH, Usage(1, len(pieces), 0))
    logprobs = completion.choice([TextDelta(text, tuple(range(len(pieces))), items)], done)["logprobs"]
    assert logprobs["text_offset"] == [0, 0, 1, 2, 2, 4, 5]


def test_several_choices_count_each_prompt_once_and_every_completion() -> None:
    usages = [Usage(5, 3, 4), Usage(5, 2, 5), Usage(7, 1, 0), Usage(7, 4, 7)]
    assert combined_usage(usages, n=2) == Usage(prompt_tokens=12, completion_tokens=10, cached_tokens=4)
    builder = ResponseBuilder("cmpl-1", "m", 1, chat=False, logprobs=False, index=3)
    assert builder.chunk(TextDelta("x"))["choices"][0]["index"] == 3


def test_chat_chunks_send_the_role_once_and_close_with_an_empty_delta() -> None:
    builder = ResponseBuilder("chatcmpl-1", "m", 7, chat=True, logprobs=False)
    first = builder.chunk(TextDelta("Hi"))
    second = builder.chunk(TextDelta("!"))
    last = builder.chunk(None, "stop")
    assert first == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "logprobs": None,
                                  "finish_reason": None}]}
    assert second["choices"][0]["delta"] == {"content": "!"}
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert builder.usage_chunk(Usage(1, 2, 0)) == {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                  "prompt_tokens_details": {"cached_tokens": 0}}}


TEXTS = ["Hello", " wörld 🌍", 'quote " and \\ backslash', "tab\tnew\nline\x01", "", "\u2028 separator"]


@pytest.mark.parametrize("chat", [True, False])
def test_streamed_text_chunks_have_the_bytes_of_the_chunk_json_whatever_their_text(chat: bool) -> None:
    made, reference = (ResponseBuilder("cmpl-1", "m", 1700000000, chat, logprobs=False) for _ in range(2))
    for text in TEXTS:
        delta = TextDelta(text, (5,))
        assert made.chunk_bytes(delta) == json_bytes(reference.chunk(delta))
    assert json.loads(made.chunk_bytes(TextDelta("x"))) == {
        "id": "cmpl-1", "object": "chat.completion.chunk" if chat else "text_completion", "created": 1700000000,
        "model": "m", "choices": [{"index": 0, **({"delta": {"content": "x"}} if chat else {"text": "x"}),
                                   "logprobs": None, "finish_reason": None}]}


def test_a_streamed_chunk_with_logprobs_or_the_role_still_goes_through_the_whole_chunk() -> None:
    builder = ResponseBuilder("chatcmpl-2", "m", 1, chat=True, logprobs=True)
    reference = ResponseBuilder("chatcmpl-2", "m", 1, chat=True, logprobs=True)
    first = TextDelta("Hi", (7,), (TokenLogprob(7, -0.5, "Hi", (), b"Hi"),))
    got = json.loads(builder.chunk_bytes(first))
    assert got == json.loads(json_bytes(reference.chunk(first)))
    assert got["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert got["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
