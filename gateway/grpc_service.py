"""The public gRPC `Gateway` service: protobuf in, core call, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
from flashstream.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.auth import ApiKeys
from gateway.cache.key import tenant_from_authorization
from gateway.core import GatewayCore
from gateway.embeddings import EmbeddingService
from gateway.pb_convert import (
    card_to_pb,
    chat_request_from_pb,
    delta_to_pb,
    embed_request_from_pb,
    embed_response_to_pb,
    finished_to_pb,
    generate_request_from_pb,
    translate_event_to_pb,
    translation_settings_from_pb,
)
from gateway.schema import Finished, GenerationRequest
from gateway.translate import TranslationSession
from services.common.errors import FlashStreamError, Unavailable
from services.common.grpc_server import handle_errors
from services.common.tracing import TRACEPARENT

T = TypeVar("T")

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, core: GatewayCore, api_keys: ApiKeys, embeddings: EmbeddingService | None = None) -> None:
        self._core = core
        self._keys = api_keys
        self._embeddings = embeddings

    def _counted(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args), counting a FlashStreamError it raises as an error returned to the client."""
        try:
            return fn(*args)
        except FlashStreamError as exc:
            self._core.record_error(exc)
            raise

    def _authorize(self, context: grpc.aio.ServicerContext) -> str:
        """Checks the API key; returns the caller's tenant ("" without keys)."""
        if not self._keys.enabled:
            return ""
        metadata = dict(context.invocation_metadata() or ())
        self._counted(self._keys.check, metadata.get("authorization"))
        return tenant_from_authorization(metadata.get("authorization"), True)

    async def _stream(
        self, build: object, request: object, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateChunk]:
        tenant = self._authorize(context)
        req: GenerationRequest = self._counted(build, request)  # type: ignore[arg-type]
        traceparent = dict(context.invocation_metadata() or ()).get(TRACEPARENT, "")
        generation = self._core.start(req, time_limit_s=context.time_remaining(), tenant=tenant,
                                      traceparent=traceparent)
        try:
            async for event in generation:
                if isinstance(event, Finished):
                    yield finished_to_pb(generation.request_id, event)
                else:
                    yield delta_to_pb(generation.request_id, event)
        finally:
            generation.close()  # a cancelled call aborts its request upstream

    @handle_errors
    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateChunk]:
        async for chunk in self._stream(generate_request_from_pb, request, context):
            yield chunk

    @handle_errors
    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateChunk]:
        async for chunk in self._stream(chat_request_from_pb, request, context):
            yield chunk

    @handle_errors
    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        self._authorize(context)
        return gateway_pb2.ListModelsResponse(models=[card_to_pb(c) for c in self._core.list_models()])

    @handle_errors
    async def Embed(self, request: gateway_pb2.EmbedRequest,
                    context: grpc.aio.ServicerContext) -> gateway_pb2.EmbedResponse:
        tenant = self._authorize(context)
        if self._embeddings is None:
            raise Unavailable("this gateway serves no embeddings")
        result = await self._embeddings.embed(embed_request_from_pb(request), tenant, context.time_remaining())
        return embed_response_to_pb(result)

    @handle_errors
    async def Translate(
        self, request_iterator: AsyncIterator[gateway_pb2.TranslateSegment], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.TranslateChunk]:
        """Segments are read one at a time, each after the previous one's translation ended: the ones a client
        sends meanwhile wait in the call's flow control. The call's deadline bounds the whole session."""
        tenant = self._authorize(context)
        segments = aiter(request_iterator)
        segment = await anext(segments, None)
        if segment is None:
            return
        session = self._counted(lambda: TranslationSession(self._core, translation_settings_from_pb(segment), tenant))
        while segment is not None:
            index = session.num_segments
            self._counted(session.check_segment, segment.text, segment.model, segment.source_language.strip(),
                          segment.target_language.strip())
            async for event in session.translate(segment.text, context.time_remaining()):
                yield translate_event_to_pb(index, event)
            segment = await anext(segments, None)
