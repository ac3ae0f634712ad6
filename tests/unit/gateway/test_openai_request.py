"""OpenAI request JSON → GenerationRequest: exact SamplingParams and exact error bodies."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import RequestError
from gateway.openai_request import parse_openai_request
from gateway.schema import ChatTurn, GenerationRequest
from services.common.openai_errors import error_response
from services.common.sampling import SamplingParams
from services.common.text_options import TextOptions


def test_completion_defaults_follow_openai() -> None:
    parsed = parse_openai_request({"model": "m", "prompt": "Hi"}, chat=False)
    assert parsed.request == GenerationRequest(
        model="m", prompt="Hi", sampling=SamplingParams(max_tokens=16, temperature=1.0),
        options=TextOptions(add_special_tokens=True),
    )
    assert (parsed.chat, parsed.stream, parsed.include_usage, parsed.logprobs) == (False, False, False, False)


def test_every_sampling_field_is_carried_exactly() -> None:
    body = {
        "prompt": ["Hi"], "max_tokens": 8, "temperature": 0, "top_p": 0.5, "top_k": -1, "min_p": 0.1,
        "n": 1, "stop": ["a", "b"], "seed": 42, "presence_penalty": 1, "frequency_penalty": -1.5,
        "repetition_penalty": 1.1, "logprobs": 3, "ignore_eos": True, "min_tokens": 4, "stop_token_ids": [2, 7],
        "skip_special_tokens": False, "include_stop_str_in_output": True, "user": "x", "stream": True,
        "stream_options": {"include_usage": True, "include_latency": True}, "priority": 5, "timeout": 2.5,
        "unknown_field": [1],
    }
    parsed = parse_openai_request(body, chat=False)
    assert parsed.request == GenerationRequest(
        model="", prompt="Hi",
        sampling=SamplingParams(max_tokens=8, min_tokens=4, temperature=0.0, top_k=0, top_p=0.5, min_p=0.1,
                                repetition_penalty=1.1, presence_penalty=1.0, frequency_penalty=-1.5, seed=42,
                                stop_token_ids=(2, 7), ignore_eos=True, logprobs=3),
        options=TextOptions(stop=("a", "b"), include_stop_str_in_output=True, skip_special_tokens=False,
                            add_special_tokens=True),
        priority=5, timeout_s=2.5,
    )
    assert (parsed.stream, parsed.include_usage, parsed.logprobs, parsed.include_latency) == (True, True, True, True)


def test_chat_takes_messages_max_completion_tokens_and_top_logprobs() -> None:
    parsed = parse_openai_request({
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "U"}]},
                     {"role": "assistant", "content": None}],
        "max_tokens": 3, "max_completion_tokens": 9, "logprobs": True, "top_logprobs": 2, "stop": "\n",
    }, chat=True)
    assert parsed.request == GenerationRequest(
        model="", messages=(ChatTurn("system", "S"), ChatTurn("user", "U"), ChatTurn("assistant", "")),
        sampling=SamplingParams(max_tokens=9, temperature=1.0, logprobs=2),
        options=TextOptions(stop=("\n",), add_special_tokens=False),
    )
    assert parsed.logprobs is True


def test_a_chat_without_a_limit_fills_the_context_and_a_completion_defaults_to_sixteen() -> None:
    chat = parse_openai_request({"messages": [{"role": "user", "content": "U"}], "min_tokens": 40}, chat=True)
    assert chat.request == GenerationRequest(
        model="", messages=(ChatTurn("user", "U"),),
        sampling=SamplingParams(min_tokens=40, temperature=1.0, fill_context=True),
        options=TextOptions(add_special_tokens=False),
    )
    limited = parse_openai_request({"messages": [{"role": "user", "content": "U"}], "max_tokens": 5}, chat=True)
    assert (limited.request.sampling.fill_context, limited.request.sampling.max_tokens) == (False, 5)
    # An explicit limit of 2**31 - 1 is a limit (the gateway's context check refuses it), not "fill the context".
    huge = parse_openai_request({"messages": [{"role": "user", "content": "U"}], "max_tokens": 2**31 - 1}, chat=True)
    assert (huge.request.sampling.fill_context, huge.request.sampling.max_tokens) == (False, 2**31 - 1)
    completion = parse_openai_request({"prompt": "Hi"}, chat=False)
    assert (completion.request.sampling.fill_context, completion.request.sampling.max_tokens) == (False, 16)


def test_n_and_a_batch_of_prompts_give_one_request_per_choice_prompt_by_prompt() -> None:
    parsed = parse_openai_request({"prompt": ["a", [7, 8]], "n": 2, "seed": 5, "logit_bias": {"9": -1, "3": 2.5}},
                                  chat=False)
    choices = parsed.choice_requests()
    assert [(r.prompt, r.token_ids, r.sampling.seed) for r in choices] == [
        ("a", None, 5), ("a", None, 6), (None, (7, 8), 5), (None, (7, 8), 6)]
    assert choices[0].sampling.logit_bias == ((3, 2.5), (9, -1.0))
    chat = parse_openai_request({"messages": [{"role": "user", "content": "U"}], "n": 3}, chat=True)
    assert chat.choice_requests() == [chat.request] * 3


def test_top_p_zero_keeps_only_the_best_token() -> None:
    parsed = parse_openai_request({"prompt": "x", "top_p": 0, "temperature": 0.7}, chat=False)
    assert (parsed.request.sampling.top_k, parsed.request.sampling.top_p, parsed.request.sampling.is_greedy) == (
        1, 1.0, True)


def test_token_id_prompt_becomes_token_ids() -> None:
    parsed = parse_openai_request({"prompt": [[1, 2, 3]]}, chat=False)
    assert (parsed.request.prompt, parsed.request.token_ids) == (None, (1, 2, 3))


def _body(exc: RequestError) -> tuple[int, dict[str, Any]]:
    status, body, _ = error_response(exc)
    return status, body


def _err(message: str, param: str | None, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


@pytest.mark.parametrize(("body", "chat", "message", "param", "code"), [
    ([], False, "the request body must be a JSON object, got array", None, "invalid_type"),
    ({}, False, "'prompt' is required", "prompt", "missing_required_parameter"),
    ({"prompt": ""}, False, "prompt must not be empty", "prompt", "invalid_value"),
    ({"prompt": []}, False, "prompt must not be empty", "prompt", "invalid_value"),
    ({"prompt": ["a", 5]}, False,
     "'prompt' must be a string, an array of token ids, or an array of either, got array", "prompt", "invalid_type"),
    ({"prompt": 5}, False, "'prompt' must be a string, an array of token ids, or an array of either, got integer",
     "prompt", "invalid_type"),
    ({"prompt": "x", "max_tokens": -1}, False, "max_tokens must be at least 1, got -1", "max_tokens",
     "invalid_value"),
    ({"prompt": "x", "max_tokens": "10"}, False, "'max_tokens' must be an integer, got string", "max_tokens",
     "invalid_type"),
    ({"prompt": "x", "max_tokens": 2.5}, False, "'max_tokens' must be an integer, got number", "max_tokens",
     "invalid_type"),
    ({"prompt": "x", "temperature": True}, False, "'temperature' must be a number, got boolean", "temperature",
     "invalid_type"),
    ({"prompt": "x", "temperature": -1}, False, "'temperature' must be between 0 and 2, got -1", "temperature",
     "invalid_value"),
    ({"prompt": "x", "temperature": 5}, False, "'temperature' must be between 0 and 2, got 5", "temperature",
     "invalid_value"),
    ({"prompt": "x", "top_p": 1.5}, False, "'top_p' must be between 0 and 1, got 1.5", "top_p", "invalid_value"),
    ({"messages": [{"role": "user", "content": "U"}], "logprobs": True, "top_logprobs": 21}, True,
     "logprobs must be in [0, 20], got 21", "top_logprobs", "invalid_value"),
    ({"prompt": "x", "presence_penalty": 2.5}, False, "presence_penalty must be in [-2, 2], got 2.5",
     "presence_penalty", "invalid_value"),
    ({"prompt": "x", "frequency_penalty": -3}, False, "frequency_penalty must be in [-2, 2], got -3.0",
     "frequency_penalty", "invalid_value"),
    ({"prompt": "x", "logit_bias": {"5": 101}}, False, "logit_bias values must be in [-100, 100], got 101.0 for "
     "token 5", "logit_bias", "invalid_value"),
    ({"prompt": "x", "logit_bias": {"a": 1}}, False, "'logit_bias' keys must be token ids, got 'a'", "logit_bias",
     "invalid_value"),
    ({"prompt": "x", "logit_bias": [1]}, False, "'logit_bias' must be an object, got array", "logit_bias",
     "invalid_type"),
    ({"prompt": "x", "logprobs": -1}, False, "logprobs must be in [0, 20], got -1", "logprobs", "invalid_value"),
    ({"prompt": "x", "logprobs": 21}, False, "logprobs must be in [0, 20], got 21", "logprobs", "invalid_value"),
    ({"prompt": "x", "stop": ["a", 1]}, False, "'stop' must be a string or an array of strings, got array", "stop",
     "invalid_type"),
    ({"prompt": "x", "stop": ""}, False, "stop strings must not be empty", "stop", "invalid_value"),
    ({"prompt": "x", "n": 0}, False, "'n' must be between 1 and 128, got 0", "n", "invalid_value"),
    ({"prompt": "x", "n": 2, "best_of": 3}, False,
     "'best_of' must equal 'n': this server returns every choice it generates", "best_of", "unsupported_value"),
    ({"messages": [{"role": "user"}]}, True, "messages[0].content is required", "messages[0].content",
     "missing_required_parameter"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, False,
     "'stream_options' is only allowed when 'stream' is true", "stream_options", "invalid_value"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, False, "'echo' together with 'logprobs' is not supported",
     "echo", "unsupported_value"),
    ({"prompt": "x", "timeout": -1}, False, "timeout must be a non-negative number of seconds, got -1.0",
     "timeout", "invalid_value"),
    ({"prompt": "x", "seed": -3}, False, "seed must be in [0, 2**63), got -3", "seed", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, True,
     "max_tokens must be at least 1, got 0", "max_completion_tokens", "invalid_value"),
    # The tokenizer stage adds a forced call's grammar; what would keep it from ending the output is refused here.
    ({"messages": [{"role": "user", "content": "x"}], "min_tokens": 3, "tool_choice": "required",
      "tools": [{"type": "function", "function": {"name": "f"}}]}, True,
     "min_tokens and ignore_eos cannot be combined with guided decoding", None, "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, True,
     "'top_logprobs' requires 'logprobs' to be true", "top_logprobs", "invalid_value"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, True,
     "messages[0].role must be one of system, user, assistant, tool, got 'wizard'", "messages[0].role",
     "invalid_value"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, True,
     "messages[0].content[0] must be a text part; only text is supported", "messages[0].content",
     "unsupported_value"),
    ({"messages": [{"content": "x"}]}, True, "messages[0] must be an object with a string 'role'", "messages[0]",
     "invalid_type"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, True,
     '\'tools[0]\' must be a function tool: {"type": "function", "function": {"name": ...}}', "tools[0]",
     "invalid_type"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "objec"}}}}, True,
     "'response_format' is not a valid JSON schema at type: 'objec' is not valid under any of the given schemas",
     "response_format", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "guided_json": {"properties": {"a": {"$ref": "#/$defs/b"}}}},
     True, "'response_format' cannot be enforced: Cannot find field $defs in #/$defs/b", "response_format", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {
        "schema": {"type": "object", "required": "a"}}}}, True,
     "'response_format' is not a valid JSON schema at required: 'a' is not of type 'array'", "response_format",
     "invalid_value"),
    ({"prompt": "x", "guided_regex": "[a-"}, False,
     "'response_format' is not a valid regex: Regex parsing error at position 4: Unclosed '['", "response_format",
     "invalid_value"),
    # Specs that parse but match no text: the worker would find no token to allow.
    ({"prompt": "x", "guided_regex": "[^\\d\\D]"}, False,
     "'response_format' matches no text: its grammar allows no first character and no empty output",
     "response_format", "invalid_value"),
    ({"prompt": "x", "guided_grammar": "root ::= root"}, False,
     "'response_format' matches no text: its grammar allows no first character and no empty output",
     "response_format", "invalid_value"),
    ({"prompt": "x", "guided_grammar": "root ::= [^\\x00-\\U0010FFFF]"}, False,
     "'response_format' matches no text: its grammar allows no first character and no empty output",
     "response_format", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, True,
     "tool_choice names function 'g', which is not among the tools", "tool_choice", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, True,
     "tool_choice asks for a tool call but no tools were given", "tool_choice", "invalid_value"),
])
def test_bad_fields_get_an_openai_400_naming_the_field(
    body: Any, chat: bool, message: str, param: str | None, code: str
) -> None:
    with pytest.raises(RequestError) as err:
        parse_openai_request(body, chat)
    assert _body(err.value) == (400, _err(message, param, code))
