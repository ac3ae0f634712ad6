"""Structured output and tool calling through the whole stack, driven by the official `openai` client and gRPC.

The demo checkpoint (random weights) gets a Hermes-style tool template; whatever the weights say, JSON output
validates against its schema and a required tool call parses into OpenAI tool_calls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import jsonschema
import openai
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from services.demo import build_demo_model
from services.launcher import Stack
from tests.integration.stack_fixture import running_stack, stage_logs
from tests.unit.tokenizer.tool_templates import HERMES_TEMPLATE, set_chat_template

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "langs"], "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "langs": {"type": "array", "items": {"enum": ["de", "en", "ja"]}, "maxItems": 3},
}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {},
                                                                       "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "What is the weather in Köln?"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = set_chat_template(build_demo_model(tmp_path_factory.mktemp("model") / "demo"), HERMES_TEMPLATE)
    log_dir = tmp_path_factory.mktemp("logs")
    with running_stack(model_dir, log_dir) as running:
        running.log_dir = log_dir
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.gateway_http + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_validates_whole_and_streamed(client: openai.OpenAI, stack: Stack, seed: int) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    whole = client.chat.completions.create(model="flashstream-demo", messages=ASK, response_format=fmt,
                                           temperature=1.0, seed=seed, max_tokens=120)
    assert whole.choices[0].finish_reason == "stop", stage_logs(stack.log_dir)
    jsonschema.validate(json.loads(whole.choices[0].message.content), PERSON)
    stream = client.chat.completions.create(model="flashstream-demo", messages=ASK, response_format=fmt,
                                            temperature=1.0, seed=seed, max_tokens=120, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content


def test_json_object_mode_gives_a_json_object(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="flashstream-demo", messages=ASK, temperature=0.7, seed=4,
                                         response_format={"type": "json_object"}, max_tokens=300)
    if out.choices[0].finish_reason == "stop":  # an unbounded object may meet max_tokens on random weights
        assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_an_invalid_schema_is_a_400_naming_the_problem(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "required": "name"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="flashstream-demo", messages=ASK, response_format=fmt)
    assert err.value.body["message"] == ("'response_format' is not a valid JSON schema at required: 'name' is not of "
                                         "type 'array'")


def test_the_openai_client_tool_round_trip_works_unchanged(client: openai.OpenAI, stack: Stack) -> None:
    first = client.chat.completions.create(model="flashstream-demo", messages=ASK, tools=TOOLS,
                                           tool_choice="required", parallel_tool_calls=False, temperature=0.8,
                                           seed=7, max_tokens=150)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", stage_logs(stack.log_dir)
    calls = choice.message.tool_calls
    assert calls and all(c.type == "function" and c.id.startswith("call_") for c in calls)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    history = [*ASK, choice.message.model_dump(exclude_none=True)]
    history += [{"role": "tool", "tool_call_id": c.id, "content": '{"temp": 21}'} for c in calls]
    second = client.chat.completions.create(model="flashstream-demo", messages=history, tools=TOOLS,
                                            tool_choice="none", max_tokens=8)
    assert second.choices[0].message.tool_calls is None
    assert isinstance(second.choices[0].message.content, str)
    # tool_choice "none" leaves the tool list out of the prompt; the call and its answer are in it.
    bare = client.chat.completions.create(model="flashstream-demo", messages=ASK, max_tokens=1)
    assert second.usage.prompt_tokens > bare.usage.prompt_tokens + 10


def test_a_named_tool_call_streams_as_deltas_the_client_accumulates(client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    stream = client.chat.completions.create(model="flashstream-demo", messages=ASK, tools=TOOLS, tool_choice=choice,
                                            temperature=1.0, seed=11, max_tokens=150, stream=True)
    chunks = [c for c in stream if c.choices]
    deltas = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert deltas and {d.function.name for d in deltas} == {"get_weather"}
    assert [d.index for d in deltas] == list(range(len(deltas)))
    for d in deltas:
        jsonschema.validate(json.loads(d.function.arguments), TOOLS[0]["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_grpc_regex_constraint_shapes_the_text(stack: Stack) -> None:
    sampling = common_pb2.SamplingParams(max_tokens=40, temperature=1.0, seed=5,
                                         guided=common_pb2.GuidedDecoding(regex=r"[0-9]{3}-[a-z]{2,4}"))
    request = gateway_pb2.GenerateRequest(model="flashstream-demo", prompt="Code:",
                                          options=gateway_pb2.GenerateOptions(sampling=sampling))
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        messages = list(gateway_pb2_grpc.GatewayStub(channel).Generate(request, timeout=120))
    text = "".join(m.chunk.text for m in messages if m.HasField("chunk"))
    assert messages[-1].done.finish_reason == common_pb2.FINISH_REASON_EOS
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", text), text
    bad = gateway_pb2.GenerateRequest(model="flashstream-demo", prompt="Code:", options=gateway_pb2.GenerateOptions(
        sampling=common_pb2.SamplingParams(guided=common_pb2.GuidedDecoding(regex="[0-"))))
    with grpc.insecure_channel(stack.gateway_grpc) as channel, pytest.raises(grpc.RpcError) as err:
        list(gateway_pb2_grpc.GatewayStub(channel).Generate(bad, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid regex" in err.value.details()
