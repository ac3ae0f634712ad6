"""fill_context end to end, as processes: a chat without max_tokens (HTTP) and a completion that asks for
fill_context (gRPC) each generate exactly what the prompt leaves of the context, which only the tokenizer stage
can tell; the scheduler gets that number, never the flag."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from services.demo import build_demo_model
from services.launcher import Stack
from tests.integration.stack_fixture import running_stack

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

MAX_MODEL_LEN = 40  # small, so that filling the context takes a few dozen CPU steps


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = build_demo_model(tmp_path_factory.mktemp("model") / "demo")
    with running_stack(model_dir, tmp_path_factory.mktemp("logs"), worker_args=f"--max-model-len {MAX_MODEL_LEN}",
                       extra=["--num-gateways", "1", "--num-tokenizers", "1"]) as running:
        yield running


def _post(stack: Stack, path: str, body: dict) -> tuple[int, dict]:
    host, port = stack.gateway_http.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_an_http_chat_without_max_tokens_generates_exactly_what_its_prompt_leaves(stack: Stack) -> None:
    status, body = _post(stack, "/v1/chat/completions", {
        "model": "flashstream-demo", "messages": [{"role": "user", "content": "Name a river."}],
        "temperature": 0, "ignore_eos": True})
    assert status == 200, body
    usage = body["usage"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == MAX_MODEL_LEN


def test_a_grpc_completion_that_asks_for_fill_context_generates_what_its_prompt_leaves(stack: Stack) -> None:
    request = gateway_pb2.GenerateRequest(model="flashstream-demo", prompt="Once upon a time", options=(
        gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(fill_context=True, ignore_eos=True))))
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        messages = list(gateway_pb2_grpc.GatewayStub(channel).Generate(request, timeout=120))
    done = messages[-1].done
    assert done.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert done.usage.prompt_tokens + done.usage.completion_tokens == MAX_MODEL_LEN
    assert sum(len(m.chunk.token_ids) for m in messages[:-1]) == done.usage.completion_tokens


def test_a_chat_whose_prompt_fills_the_context_is_refused_by_the_tokenizer_stage(stack: Stack) -> None:
    status, body = _post(stack, "/v1/chat/completions", {
        "model": "flashstream-demo", "messages": [{"role": "user", "content": "river " * 60}]})
    assert status == 400
    message = body["error"]["message"]
    assert message.startswith("request 'chatcmpl-") and "leaves no room in the model's context of 40 tokens" in message
