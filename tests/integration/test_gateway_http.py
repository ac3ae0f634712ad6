"""The OpenAI-compatible HTTP API against a real gRPC fake tokenizer over loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.integration.fake_tokenizer import FAKE_CHUNKS, Stack, gateway_stack, wait_until

USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 3}}


async def _post(session: aiohttp.ClientSession, stack: Stack, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    async with session.post(stack.http + path, data=data, **kw) as resp:
        return resp.status, await resp.json()


async def _sse(session: aiohttp.ClientSession, stack: Stack, path: str, body: Any) -> list[Any]:
    """The SSE events of a streamed answer, JSON-decoded ("[DONE]" stays a string)."""
    async with session.post(stack.http + path, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        raw = (await resp.read()).decode()
    events = [block.removeprefix("data: ") for block in raw.split("\n\n") if block]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The answer without its server-chosen id and clock."""
    return {k: v for k, v in obj.items() if k not in ("id", "created")}


def test_completion_not_streamed_returns_one_openai_body() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            status, body = await _post(session, stack, "/v1/completions", {"model": "fake-model", "prompt": "Hi"})
            assert status == 200
            assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
            assert _strip(body) == {
                "object": "text_completion", "model": "fake-model",
                "choices": [{"index": 0, "text": "Hello, world!", "logprobs": None, "finish_reason": "stop"}],
                "usage": USAGE,
            }

    asyncio.run(main())


def test_completion_streamed_sends_openai_chunks_then_done() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            events = await _sse(session, stack, "/v1/completions",
                                {"prompt": ["Hi"], "stream": True, "stream_options": {"include_usage": True}})
            assert events[-1] == "[DONE]"
            assert len({e["id"] for e in events[:-1]}) == 1
            choices = [(e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in events[:-2]]
            # Deltas queued together are merged into one event; the text stays exact and in order.
            assert "".join(text for text, _ in choices) == "".join(FAKE_CHUNKS)
            assert [finish for _, finish in choices] == [None] * (len(choices) - 1) + ["stop"]
            assert choices[-1] == ("", "stop")
            first = _strip(events[0])
            assert first["choices"][0]["text"].startswith("Hello")
            assert first == {"object": "text_completion", "model": "fake-model", "choices": [
                {"index": 0, "text": first["choices"][0]["text"], "logprobs": None, "finish_reason": None}]}
            assert _strip(events[-2]) == {"object": "text_completion", "model": "fake-model", "choices": [],
                                          "usage": USAGE}

    asyncio.run(main())


def test_chat_not_streamed_returns_the_assistant_message() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            status, body = await _post(session, stack, "/v1/chat/completions", {
                "messages": [{"role": "developer", "content": "Be brief."},
                             {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
                "max_completion_tokens": 9})
            assert status == 200 and body["id"].startswith("chatcmpl-")
            assert _strip(body) == {
                "object": "chat.completion", "model": "fake-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world!"},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": USAGE,
            }
            sent = stack.fake.requests[0]
            assert [(m.role, m.content) for m in sent.chat.messages] == [("system", "Be brief."), ("user", "Hi there")]
            assert sent.sampling.max_tokens == 9

    asyncio.run(main())


def test_chat_streamed_sends_role_then_content_deltas_then_finish() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            events = await _sse(session, stack, "/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "Hi"}], "stream": True})
            assert events[-1] == "[DONE]"
            n = len(events) - 1
            assert [e["object"] for e in events[:-1]] == ["chat.completion.chunk"] * n
            deltas = [e["choices"][0]["delta"] for e in events[:-1]]
            assert deltas[0]["role"] == "assistant" and deltas[0]["content"].startswith("Hello")
            assert all(set(d) == {"content"} for d in deltas[1:-1]) and deltas[-1] == {}
            assert "".join(d.get("content", "") for d in deltas) == "".join(FAKE_CHUNKS)
            assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None] * (n - 1) + ["stop"]

    asyncio.run(main())


def test_completion_logprobs_follow_openai_completions_shape() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            status, body = await _post(session, stack, "/v1/completions", {"prompt": "Hi", "logprobs": 2})
            assert status == 200
            assert body["choices"][0]["logprobs"] == {
                "tokens": list(FAKE_CHUNKS),
                "token_logprobs": [-0.5] * 5,
                "top_logprobs": [{"t0": -1.0, "t1": -2.0}] * 5,
                "text_offset": [0, 5, 6, 10, 12],
            }
            assert stack.fake.requests[0].sampling.logprobs == 2

    asyncio.run(main())


def test_chat_logprobs_follow_openai_chat_shape() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            status, body = await _post(session, stack, "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 1})
            assert status == 200
            content = body["choices"][0]["logprobs"]["content"]
            assert content[0] == {"token": "Hello", "logprob": -0.5, "bytes": list(b"Hello"),
                                  "top_logprobs": [{"token": "t0", "logprob": -1.0, "bytes": [116, 48]}]}
            assert [c["token"] for c in content] == list(FAKE_CHUNKS)

    asyncio.run(main())


def _error(message: str, param: str | None, code: str | None, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


BAD_INPUTS = [
    ("/v1/completions", {"prompt": ""}, 400, _error("prompt must not be empty", "prompt", "invalid_value")),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400,
     _error("max_tokens must be at least 1, got 0", "max_tokens", "invalid_value")),
    ("/v1/completions", {"prompt": "x", "max_tokens": 100}, 400, _error(
        "max_tokens (100) plus the prompt (1 token(s) at least) exceeds the context of model 'fake-model' (64 tokens)",
        "max_tokens", "invalid_value")),
    ("/v1/completions", {"prompt": "x", "model": "gpt-9"}, 404, _error(
        "The model 'gpt-9' does not exist; this gateway serves: fake-model", "model", "model_not_found")),
    ("/v1/completions", '{"prompt": "x",', 400, _error(
        "the request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 16 "
        "(char 15)", None, "invalid_json")),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400,
     _error("'temperature' must be a number, got string", "temperature", "invalid_type")),
    ("/v1/chat/completions", {"messages": "hi"}, 400,
     _error("'messages' must be an array, got string", "messages", "invalid_type")),
    ("/v1/chat/completions", {"messages": []}, 400,
     _error("messages must hold at least one message", "messages", "invalid_value")),
    ("/v1/completions", {"prompt": "x", "n": 200}, 400, _error("'n' must be between 1 and 128, got 200", "n",
                                                              "invalid_value")),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": 5}, 400,
     _error("'temperature' must be between 0 and 2, got 5", "temperature", "invalid_value")),
    ("/v1/completions", {"prompt": "x" * 70_000}, 413,
     _error("the request body is larger than 65536 bytes", None, "request_too_large")),
    ("/v1/completions", {"prompt": "error:3:prompt (70 tokens) plus max_tokens (16) exceeds 64"}, 400,
     _error("prompt (70 tokens) plus max_tokens (16) exceeds 64", None, "invalid_value")),
    ("/v1/completions", {"prompt": "error:14:no worker"}, 503,
     _error("no worker", None, "service_unavailable", "server_error")),
    ("/v1/completions", {"prompt": "hang", "timeout": 0.2}, 504, _error(
        "request {rid} passed its deadline of 0.2 s", None, "timeout", "server_error")),
]


@pytest.mark.parametrize(("path", "body", "status", "error"), BAD_INPUTS)
def test_bad_input_gets_its_status_and_openai_error_while_a_good_request_completes(
    path: str, body: Any, status: int, error: dict[str, Any]
) -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            good = asyncio.create_task(_post(session, stack, "/v1/completions", {"prompt": "Hi"}))
            got_status, got = await _post(session, stack, path, body)
            expected = json.loads(json.dumps(error))
            if "{rid}" in error["error"]["message"]:
                rid = next(r.request_id for r in stack.fake.requests if r.prompt == "hang")
                expected["error"]["message"] = error["error"]["message"].format(rid=rid)
            assert (got_status, got) == (status, expected)
            good_status, good_body = await good
            assert (good_status, good_body["choices"][0]["text"]) == (200, "Hello, world!")

    asyncio.run(main())


def test_queue_full_is_429_with_retry_after() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            async with session.post(stack.http + "/v1/completions", json={"prompt": "error:8:queue is full"}) as resp:
                assert resp.status == 429 and resp.headers["Retry-After"] == "1"
                assert await resp.json() == _error("queue is full", None, "rate_limit_exceeded", "rate_limit_error")

    asyncio.run(main())


def test_error_after_streaming_began_is_a_last_error_event_then_done() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            events = await _sse(session, stack, "/v1/completions", {"prompt": "late-error:14:worker lost",
                                                                    "stream": True})
            assert [e["choices"][0]["text"] for e in events[:1]] == ["Hello"]
            assert events[1:] == [_error("worker lost", None, "service_unavailable", "server_error"), "[DONE]"]

    asyncio.run(main())


def test_client_disconnect_mid_stream_sends_an_abort_to_the_tokenizer() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            async with aiohttp.ClientSession() as session:
                resp = await session.post(stack.http + "/v1/completions", json={"prompt": "slow", "stream": True})
                first = await resp.content.readuntil(b"\n\n")
                assert json.loads(first.removeprefix(b"data: "))["choices"][0]["text"] == "Hello"
                resp.close()  # drop the connection mid-stream
            await asyncio.wait_for(stack.fake.aborted.wait(), 5)
            assert stack.fake.aborts == [stack.fake.requests[0].request_id]
            await wait_until(lambda: stack.gateway.core.num_running == 0)

    asyncio.run(main())


def test_unknown_routes_and_methods_get_openai_errors() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            async with session.get(stack.http + "/v1/completions") as resp:
                assert (resp.status, await resp.json()) == (405, _error(
                    "method GET is not allowed on /v1/completions", None, "method_not_allowed"))
            async with session.post(stack.http + "/v1/audio/speech", json={}) as resp:
                assert (resp.status, await resp.json()) == (404, _error(
                    "no route for POST /v1/audio/speech", None, "not_found"))

    asyncio.run(main())


def test_models_lists_the_served_model() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            async with session.get(stack.http + "/v1/models") as resp:
                assert await resp.json() == {"object": "list", "data": [
                    {"id": "fake-model", "object": "model", "created": 0, "owned_by": "flashstream",
                     "max_model_len": 64, "revision": "rev-1"}]}

    asyncio.run(main())


def test_sampling_fields_reach_the_tokenizer_request() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            status, _ = await _post(session, stack, "/v1/completions", {
                "prompt": [[5, 6, 7]], "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                "min_p": 0.05, "seed": 11, "stop": "END", "presence_penalty": 0.5, "frequency_penalty": -0.5,
                "repetition_penalty": 1.2, "ignore_eos": True, "min_tokens": 2, "stop_token_ids": [9],
                "skip_special_tokens": False, "include_stop_str_in_output": True, "priority": -1, "user": "u1",
                "some_future_field": {"ignored": True}})
            assert status == 200
            sent = stack.fake.requests[0]
            assert list(sent.tokens.token_ids) == [5, 6, 7]
            s = sent.sampling
            assert (s.max_tokens, s.top_k, s.seed, s.ignore_eos, s.min_tokens, list(s.stop_token_ids)) == (
                8, 40, 11, True, 2, [9])
            assert (s.temperature, s.top_p, s.min_p, s.presence_penalty, s.frequency_penalty,
                    s.repetition_penalty) == pytest.approx((0.7, 0.9, 0.05, 0.5, -0.5, 1.2))
            assert (list(sent.options.stop), sent.options.include_stop_str_in_output,
                    sent.options.skip_special_tokens, sent.options.add_special_tokens, sent.priority) == (
                ["END"], True, False, True, -1)

    asyncio.run(main())


def test_concurrent_requests_share_tokenizer_up_messages() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(_post(session, stack, "/v1/completions", {"prompt": f"p{i}"})
                                             for i in range(20)))
            assert [r[1]["choices"][0]["text"] for r in results] == ["Hello, world!"] * 20
            assert len(stack.fake.requests) == 20
            assert stack.fake.num_up_messages < 20  # several requests rode one TokenizerUp
            assert stack.fake.num_streams == 1

    asyncio.run(main())
