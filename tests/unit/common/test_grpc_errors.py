"""handle_errors turns core exceptions into gRPC statuses over a real loopback server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.grpc_server import create_channel, handle_errors, start_server


class _Echo:
    @handle_errors
    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"bad":
            raise InvalidArgument("prompt must not be empty")
        if request == b"boom":
            raise RuntimeError("secret internals")
        return request

    @handle_errors
    async def stream(self, request: bytes, context: grpc.aio.ServicerContext):
        yield b"one"
        raise ResourceExhausted("queue is full (4 waiting)")


def _register(server: grpc.aio.Server) -> None:
    echo = _Echo()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary),
        "Stream": grpc.unary_stream_rpc_method_handler(echo.stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])


@pytest.mark.timeout(60)
def test_errors_become_statuses_and_the_server_keeps_serving() -> None:
    async def scenario() -> None:
        stage = await start_server("127.0.0.1:0", [_register], ["test.Echo"])
        try:
            async with create_channel(f"127.0.0.1:{stage.port}") as channel:
                unary = channel.unary_unary("/test.Echo/Unary")
                stream = channel.unary_stream("/test.Echo/Stream")
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await unary(b"bad")
                assert (bad.value.code(), bad.value.details()) == (
                    grpc.StatusCode.INVALID_ARGUMENT, "prompt must not be empty")
                with pytest.raises(grpc.aio.AioRpcError) as boom:
                    await unary(b"boom")
                assert (boom.value.code(), boom.value.details()) == (
                    grpc.StatusCode.INTERNAL, "internal error: RuntimeError")
                received = []
                with pytest.raises(grpc.aio.AioRpcError) as full:
                    async for item in stream(b""):
                        received.append(item)
                assert received == [b"one"]
                assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert await unary(b"fine") == b"fine"

                health = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest(service="test.Echo"))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                await stage.set_serving(False)
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

                reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
                names = []
                async for answer in reflection.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
                    names = sorted(s.name for s in answer.list_services_response.service)
                assert names == ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "test.Echo"]
        finally:
            await stage.drain_and_stop(0)

    asyncio.run(scenario())
