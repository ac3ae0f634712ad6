"""A request message that does not decode is the caller's mistake: INVALID_ARGUMENT, not gRPC's UNKNOWN.

grpc.aio decodes a request before the handler runs and reports a decoding failure as UNKNOWN. This interceptor
gives every method a handler that receives the raw bytes and decodes them itself, so that it can answer
INVALID_ARGUMENT with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


async def _decode(deserialize: Callable[[bytes], Any], raw: bytes, context: grpc.aio.ServicerContext) -> Any:
    try:
        return deserialize(raw)
    except (DecodeError, ValueError, UnicodeDecodeError) as exc:  # a string field that is not UTF-8 is a DecodeError
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request message does not decode: {exc}")


def _one_request(behavior: Callable[..., Any], deserialize: Callable[[bytes], Any]) -> Callable[..., Any]:
    """A behaviour taking one request, in its own kind (coroutine or async generator), decoding first."""
    if inspect.isasyncgenfunction(behavior):

        async def stream_out(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request = await _decode(deserialize, raw, context)
            async for item in behavior(request, context):
                yield item

        return stream_out

    async def single_out(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await _decode(deserialize, raw, context), context)

    return single_out


def _request_stream(behavior: Callable[..., Any], deserialize: Callable[[bytes], Any]) -> Callable[..., Any]:
    """A behaviour taking a request stream, in its own kind, whose messages are decoded as they are read."""

    def decoded(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async def messages() -> AsyncIterator[Any]:
            async for raw in raws:
                yield await _decode(deserialize, raw, context)

        return messages()

    if inspect.isasyncgenfunction(behavior):

        async def stream_out(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in behavior(decoded(raws, context), context):
                yield item

        return stream_out

    async def single_out(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        return await behavior(decoded(raws, context), context)

    return single_out


class DecodeErrorsAreInvalidArgument(grpc.aio.ServerInterceptor):
    """Rewrites every method handler to decode its requests itself (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_one_request(handler.unary_unary, deserialize), None, serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_one_request(handler.unary_stream, deserialize), None,
                                                        serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_request_stream(handler.stream_unary, deserialize), None,
                                                        serialize)
        return grpc.stream_stream_rpc_method_handler(_request_stream(handler.stream_stream, deserialize), None,
                                                     serialize)
