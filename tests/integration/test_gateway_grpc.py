"""The public gRPC Gateway against a real gRPC fake tokenizer over loopback."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import create_channel
from tests.integration.fake_tokenizer import FAKE_CHUNKS, FakeTokenizerConfig, gateway_stack, wait_until


def _generate_request(prompt: str = "Say hello", **sampling: object) -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(
        prompt=prompt,
        options=gateway_pb2.GenerateOptions(sampling=common_pb2.SamplingParams(max_tokens=5, **sampling)),
    )


async def _collect(call: object) -> list[gateway_pb2.GenerateChunk]:
    return [chunk async for chunk in call]  # type: ignore[attr-defined]


def test_generate_streams_the_exact_chunks_then_one_done() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            chunks = await _collect(stub.Generate(_generate_request(temperature=0.5, seed=7)))
            # Deltas queued together reach the client merged; text and ids stay exact and in order.
            assert "".join(c.chunk.text for c in chunks[:-1]) == "".join(FAKE_CHUNKS)
            assert [t for c in chunks[:-1] for t in c.chunk.token_ids] == [0, 1, 2, 3, 4]
            assert [c.WhichOneof("event") for c in chunks] == ["chunk"] * (len(chunks) - 1) + ["done"]
            done = chunks[-1].done
            assert done.finish_reason == common_pb2.FINISH_REASON_EOS
            assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.cached_tokens) == (7, 5, 3)
            assert done.latency.tokenizer_s == pytest.approx(0.001)
            assert 0 < done.latency.gateway_s < 1
            assert len({c.request_id for c in chunks}) == 1 and chunks[0].request_id.startswith("cmpl-")
            sent = stack.fake.requests[0]
            assert sent.prompt == "Say hello" and sent.model == "fake-model"
            assert (sent.sampling.max_tokens, sent.sampling.temperature, sent.sampling.seed) == (5, 0.5, 7)
            assert sent.deadline_unix_s == pytest.approx(sent.arrival_unix_s + 600.0)

    asyncio.run(main())


def test_paced_deltas_reach_the_client_one_chunk_each() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            request = gateway_pb2.GenerateRequest(prompt="slow")  # the fake sends chunks 0.1 s apart
            chunks = await _collect(stub.Generate(request))
            assert [c.chunk.text for c in chunks[:-1]] == list(FAKE_CHUNKS)
            assert [list(c.chunk.token_ids) for c in chunks[:-1]] == [[0], [1], [2], [3], [4]]

    asyncio.run(main())


def test_chat_sends_the_messages_as_chat_input() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            request = gateway_pb2.ChatRequest(
                messages=[common_pb2.ChatMessage(role="system", content="Be brief."),
                          common_pb2.ChatMessage(role="user", content="Hi")],
            )
            chunks = await _collect(stub.Chat(request))
            assert "".join(c.chunk.text for c in chunks) == "".join(FAKE_CHUNKS)
            assert chunks[0].request_id.startswith("chatcmpl-")
            chat = stack.fake.requests[0].chat
            assert [(m.role, m.content) for m in chat.messages] == [("system", "Be brief."), ("user", "Hi")]
            assert chat.add_generation_prompt is True

    asyncio.run(main())


def test_list_models_reports_the_tokenizer_model() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            reply = await gateway_pb2_grpc.GatewayStub(channel).ListModels(gateway_pb2.ListModelsRequest())
            assert [(m.id, m.revision, m.max_model_len, m.owned_by) for m in reply.models] == [
                ("fake-model", "rev-1", 64, "flashstream")]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (gateway_pb2.GenerateRequest(prompt=""), grpc.StatusCode.INVALID_ARGUMENT, "prompt must not be empty"),
        (gateway_pb2.GenerateRequest(model="nope", prompt="x"),
         grpc.StatusCode.NOT_FOUND, "The model 'nope' does not exist; this gateway serves: fake-model"),
        (gateway_pb2.GenerateRequest(prompt="x", options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(max_tokens=0))),
         grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be at least 1, got 0"),
        (gateway_pb2.GenerateRequest(prompt="x", options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(max_tokens=64))),
         grpc.StatusCode.INVALID_ARGUMENT,
         "max_tokens (64) plus the prompt (1 token(s) at least) exceeds the context of model 'fake-model' (64 tokens)"),
        (gateway_pb2.GenerateRequest(prompt="error:8:queue is full"), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "queue is full"),
    ],
)
def test_bad_input_gets_its_status_while_a_good_request_completes(
    request_: gateway_pb2.GenerateRequest, code: grpc.StatusCode, message: str
) -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            good = asyncio.create_task(_collect(stub.Generate(_generate_request())))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(stub.Generate(request_))
            assert (err.value.code(), err.value.details()) == (code, message)
            assert "".join(c.chunk.text for c in await good) == "".join(FAKE_CHUNKS)

    asyncio.run(main())


def test_embed_without_inputs_is_invalid_argument() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Embed(gateway_pb2.EmbedRequest())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "input must hold between 1 and 2048 items, got 0"

    asyncio.run(main())


def test_cancelled_call_sends_an_abort_to_the_tokenizer() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            call = gateway_pb2_grpc.GatewayStub(channel).Generate(_generate_request("slow"))
            first = await call.read()
            assert first.chunk.text == "Hello"
            call.cancel()
            await asyncio.wait_for(stack.fake.aborted.wait(), 5)
            assert stack.fake.aborts == [first.request_id]
            await wait_until(lambda: stack.gateway.core.num_running == 0)

    asyncio.run(main())


def test_deadline_ends_the_call_with_deadline_exceeded_and_aborts_upstream() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            request = _generate_request("hang")
            request.options.timeout_s = 0.2
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(gateway_pb2_grpc.GatewayStub(channel).Generate(request))
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert err.value.details().endswith("passed its deadline of 0.2 s")
            await asyncio.wait_for(stack.fake.aborted.wait(), 5)
            assert stack.fake.aborts == [stack.fake.requests[0].request_id]

    asyncio.run(main())


def test_health_follows_the_tokenizer_stream_and_requests_on_a_broken_stream_get_unavailable() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="flashstream.v1.Gateway"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            call = gateway_pb2_grpc.GatewayStub(channel).Generate(_generate_request("hang"))
            await wait_until(lambda: len(stack.fake.requests) == 1)
            await stack.fake.break_streams()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(call)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "lost the tokenizer stream" in err.value.details()
            await wait_until(lambda: stack.fake.num_streams == 2)  # reconnected
            await wait_until(stack.gateway.core.is_ready)
            chunks = await _collect(gateway_pb2_grpc.GatewayStub(channel).Generate(_generate_request()))
            assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_EOS

    asyncio.run(main())


def test_reflection_lists_the_gateway_and_health_services() -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def main() -> None:
        async with gateway_stack() as stack, create_channel(stack.grpc_target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            reply = await call.read()
            await call.done_writing()
            names = {s.name for s in reply.list_services_response.service}
            assert {"flashstream.v1.Gateway", "grpc.health.v1.Health"} <= names

    asyncio.run(main())
