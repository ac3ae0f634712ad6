"""Protobuf translations of the gateway: public requests in, TextRequest out, TextEvents in, chunks out."""

from __future__ import annotations

import pytest
from flashstream.v1 import common_pb2, gateway_pb2, tokenizer_pb2

from gateway.pb_convert import (
    chat_request_from_pb,
    event_from_pb,
    finished_to_pb,
    generate_request_from_pb,
    text_request_to_pb,
)
from gateway.schema import (
    ChatTurn,
    Finished,
    GenerationRequest,
    Latency,
    Submission,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from services.common.errors import ErrorCode, FlashStreamError, InvalidArgument
from services.common.finish_reason import FinishReason
from services.common.sampling import SamplingParams
from services.common.text_options import TextOptions


def test_generate_request_keeps_every_option() -> None:
    pb = gateway_pb2.GenerateRequest(
        model="m", prompt="Hi", add_special_tokens=True,
        options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(max_tokens=7, temperature=0.5, seed=5), stop=["x"],
            include_stop_str_in_output=True, skip_special_tokens=True, priority=2, timeout_s=9.0),
    )
    assert generate_request_from_pb(pb) == GenerationRequest(
        model="m", prompt="Hi", sampling=SamplingParams(max_tokens=7, temperature=0.5, seed=5),
        options=TextOptions(stop=("x",), include_stop_str_in_output=True, skip_special_tokens=True,
                            add_special_tokens=True),
        priority=2, timeout_s=9.0,
    )


def test_bad_sampling_in_a_grpc_request_is_invalid_argument() -> None:
    pb = gateway_pb2.GenerateRequest(prompt="Hi", options=gateway_pb2.GenerateOptions(
        sampling=common_pb2.SamplingParams(top_p=1.5)))
    with pytest.raises(InvalidArgument, match=r"top_p must be in \(0, 1\], got 1.5"):
        generate_request_from_pb(pb)


def test_a_grpc_prompt_gets_bos_and_other_special_tokens_unless_it_says_otherwise() -> None:
    assert generate_request_from_pb(gateway_pb2.GenerateRequest(prompt="Hi")).options.add_special_tokens is True
    off = gateway_pb2.GenerateRequest(prompt="Hi", add_special_tokens=False)
    assert generate_request_from_pb(off).options.add_special_tokens is False


def test_chat_request_becomes_chat_turns() -> None:
    pb = gateway_pb2.ChatRequest(model="m", messages=[common_pb2.ChatMessage(role="user", content="Hi")])
    request = chat_request_from_pb(pb)
    assert (request.messages, request.options.add_special_tokens) == ((ChatTurn("user", "Hi"),), False)


def test_a_grpc_chat_without_max_tokens_reaches_the_tokenizer_with_fill_context_set() -> None:
    unlimited = chat_request_from_pb(gateway_pb2.ChatRequest(
        model="m", messages=[common_pb2.ChatMessage(role="user", content="Hi")],
        options=gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(min_tokens=20))))
    assert unlimited.sampling.fill_context and unlimited.sampling.min_tokens == 20
    pb = text_request_to_pb(Submission("chatcmpl-2", unlimited, 0, 0, 0))
    assert (pb.sampling.fill_context, pb.sampling.HasField("max_tokens"), pb.sampling.min_tokens) == (True, False, 20)
    limited = chat_request_from_pb(gateway_pb2.ChatRequest(
        model="m", messages=[common_pb2.ChatMessage(role="user", content="Hi")],
        options=gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(max_tokens=7))))
    assert not limited.sampling.fill_context
    pb = text_request_to_pb(Submission("chatcmpl-3", limited, 0, 0, 0))
    assert (pb.sampling.fill_context, pb.sampling.max_tokens) == (False, 7)


def test_a_grpc_completion_fills_the_context_only_when_asked_and_never_beside_max_tokens() -> None:
    plain = generate_request_from_pb(gateway_pb2.GenerateRequest(prompt="Hi"))
    assert (plain.sampling.fill_context, plain.sampling.max_tokens) == (False, 16)
    asked = generate_request_from_pb(gateway_pb2.GenerateRequest(prompt="Hi", options=gateway_pb2.GenerateOptions(
        sampling=common_pb2.SamplingParams(fill_context=True))))
    assert asked.sampling.fill_context
    with pytest.raises(InvalidArgument) as both:
        generate_request_from_pb(gateway_pb2.GenerateRequest(prompt="Hi", options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(fill_context=True, max_tokens=5))))
    assert both.value.message == "max_tokens and fill_context cannot both be set"


def test_grpc_sampling_is_validated_where_the_request_enters() -> None:
    with pytest.raises(InvalidArgument) as info:
        generate_request_from_pb(gateway_pb2.GenerateRequest(prompt="Hi", options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(top_p=1.5))))
    assert info.value.message == "top_p must be in (0, 1], got 1.5"


def test_text_request_carries_the_submission() -> None:
    request = GenerationRequest(model="m", messages=(ChatTurn("user", "Hi"),), sampling=SamplingParams(max_tokens=3),
                                options=TextOptions(stop=("\n",), echo_prompt=True), priority=1)
    pb = text_request_to_pb(Submission("chatcmpl-1", request, 100.0, 160.0, 0.002))
    expected = tokenizer_pb2.TextRequest(
        request_id="chatcmpl-1", model="m",
        chat=tokenizer_pb2.ChatInput(messages=[common_pb2.ChatMessage(role="user", content="Hi")],
                                     add_generation_prompt=True),
        sampling=SamplingParams(max_tokens=3).to_pb(common_pb2.SamplingParams),
        options=tokenizer_pb2.TextOptions(stop=["\n"], skip_special_tokens=True, add_special_tokens=True,
                                          echo_prompt=True),
        priority=1, deadline_unix_s=160.0, arrival_unix_s=100.0, gateway_s=0.002,
    )
    assert pb == expected
    ids = text_request_to_pb(Submission("c", GenerationRequest(model="m", token_ids=(4, 5),
                                                               sampling=SamplingParams()), 0, 0, 0))
    assert (ids.WhichOneof("input"), list(ids.tokens.token_ids)) == ("tokens", [4, 5])


def test_text_events_become_plain_events() -> None:
    chunk = tokenizer_pb2.TextEvent(request_id="r", num_prompt_tokens=4, chunk=common_pb2.TextChunk(
        text="ab", token_ids=[1], logprobs=[common_pb2.TokenLogprob(
            token_id=1, logprob=-0.5, text="ab", top=[common_pb2.TopLogprob(token_id=2, logprob=-1.5, text="c")])]))
    assert event_from_pb(chunk) == TextDelta("ab", (1,), (TokenLogprob(1, -0.5, "ab", (TopLogprob(2, -1.5, "c"),)),), 4)
    done = tokenizer_pb2.TextEvent(request_id="r", done=common_pb2.Done(
        finish_reason=common_pb2.FINISH_REASON_STOP_STRING, stop_string="\n",
        usage=common_pb2.Usage(prompt_tokens=4, completion_tokens=2, cached_tokens=1),
        latency=common_pb2.LatencyBreakdown(queue_s=0.25)))
    assert event_from_pb(done) == Finished(FinishReason.STOP_STRING, Usage(4, 2, 1), Latency(queue_s=0.25), "\n")
    error = event_from_pb(tokenizer_pb2.TextEvent(request_id="r", error=common_pb2.Error(code=8, message="full")))
    assert isinstance(error, FlashStreamError) and (error.code, error.message) == (ErrorCode.RESOURCE_EXHAUSTED,
                                                                                  "full")


def test_finished_becomes_a_done_chunk() -> None:
    pb = finished_to_pb("r", Finished(FinishReason.LENGTH, Usage(3, 2, 1, True), Latency(gateway_s=0.5)))
    assert pb == gateway_pb2.GenerateChunk(request_id="r", done=common_pb2.Done(
        finish_reason=common_pb2.FINISH_REASON_LENGTH,
        usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=2, cached_tokens=1, result_cached=True),
        latency=common_pb2.LatencyBreakdown(gateway_s=0.5)))


def test_a_grpc_chat_with_tools_and_a_guided_sampling_reaches_the_tokenizer_whole() -> None:
    from gateway.schema import ToolCall, ToolSpec
    from services.common.sampling import Guided

    params = '{"type": "object", "properties": {"city": {"type": "string"}}}'
    pb = gateway_pb2.ChatRequest(
        model="m",
        messages=[common_pb2.ChatMessage(role="user", content="Weather?"),
                  common_pb2.ChatMessage(role="assistant", tool_calls=[common_pb2.ToolCall(
                      id="c1", name="get_weather", arguments_json='{"city": "Oslo"}')]),
                  common_pb2.ChatMessage(role="tool", content="7°C", tool_call_id="c1", name="get_weather")],
        options=gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(max_tokens=9)),
        tools=[common_pb2.Tool(name="get_weather", description="d", parameters_json=params)],
        tool_choice=common_pb2.ToolChoice(function="get_weather"), single_tool_call=True,
    )
    request = chat_request_from_pb(pb)
    assert request.messages[1:] == (
        ChatTurn("assistant", "", (ToolCall("c1", "get_weather", '{"city": "Oslo"}'),)),
        ChatTurn("tool", "7°C", (), "c1", "get_weather"))
    assert (request.tools, request.tool_choice, request.forced_tool, request.single_tool_call) == (
        (ToolSpec("get_weather", "d", params),), "required", "get_weather", True)
    out = text_request_to_pb(Submission("r1", request, 100.0, 0.0, 0.0))
    assert list(out.chat.messages) == list(pb.messages)
    assert list(out.chat.tools) == list(pb.tools)
    assert (out.chat.tool_choice.function, out.chat.single_tool_call) == ("get_weather", True)

    guided = gateway_pb2.GenerateRequest(model="m", prompt="x", options=gateway_pb2.GenerateOptions(
        sampling=common_pb2.SamplingParams(guided=common_pb2.GuidedDecoding(regex="[a-z]+"))))
    request = generate_request_from_pb(guided)
    assert request.sampling.guided == Guided("regex", "[a-z]+")
    assert text_request_to_pb(Submission("r2", request, 100.0, 0.0, 0.0)).sampling.guided.regex == "[a-z]+"
