"""The Scheduler gRPC servicer: protobuf in and out, everything else in the worker pool and its engines.

Request ids are unique only within one Connect stream, so the core keys requests by (stream number,
request id). Each stream has an outbox of events; its writer sends everything pending as one SchedulerDown,
so a stream gets at most one message per step whatever the number of requests on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from flashstream.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

from services.common.errors import ErrorCode, FlashStreamError, InvalidArgument, Unavailable
from services.common.grpc_server import CLOSE_GRACE_S, handle_errors
from services.common.metrics import error_code_label, finish_reason_label
from services.common.tracing import NoSpan, Span, Tracing
from services.scheduler.pb import engine_state_to_pb, events_to_pb, request_from_pb
from services.scheduler.request_events import Event, NewTokens, RequestDone, RequestFailed
from services.scheduler.worker_pool import WorkerPool

log = logging.getLogger(__name__)

DEFAULT_WATCH_INTERVAL_S = 0.25
MIN_WATCH_INTERVAL_S = 0.05


@dataclass
class _Stream:
    outbox: list[Event] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    live: set[str] = field(default_factory=set)  # request ids without a terminal event yet
    upstream_done: bool = False
    closing: bool = False  # the scheduler is stopping: end the stream once the outbox is sent


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, pool: WorkerPool, tracing: Tracing | None = None) -> None:
        self.pool = pool
        self.metrics = pool.metrics
        self.tracing = tracing or Tracing()
        self._spans: dict[tuple[int, str], Span | NoSpan] = {}  # by request key, while the request is live
        self.draining = False
        self._streams: dict[int, _Stream] = {}
        self._stream_numbers = itertools.count()
        pool.on_events = self.dispatch

    def dispatch(self, events: list[Event]) -> None:
        """Puts events in their streams' outboxes (events of streams already gone are dropped)."""
        streams = self._streams
        for event in events:
            if type(event) is NewTokens:
                self._dispatch_tokens(event)
                continue
            stream = streams.get(event.key[0])
            if type(event) is RequestFailed:
                self._count_error(event)
            if self._spans:
                self._end_span(event)
            if stream is None or event.key[1] not in stream.live:
                continue  # the stream is gone, or the request already ended here (failed by a drain)
            stream.outbox.append(event)
            stream.live.discard(event.key[1])
            stream.wake.set()

    def _dispatch_tokens(self, tokens: NewTokens) -> None:
        """Each stream's share of a step's tokens, as one NewTokens in its outbox."""
        streams = self._streams
        if len(streams) == 1:  # one tokenizer replica: the whole event is its share when all its requests are live
            ((number, stream),) = streams.items()
            live = stream.live
            if all(key[0] == number and key[1] in live for key in tokens.keys):
                stream.outbox.append(tokens)
                stream.wake.set()
                return
        shares: dict[int, NewTokens] = {}
        for key, token_id, logprobs in tokens.rows():
            stream = streams.get(key[0])
            if stream is None or key[1] not in stream.live:
                continue  # the stream is gone, or the request already ended here (failed by a drain)
            share = shares.get(key[0])
            if share is None:
                share = shares[key[0]] = NewTokens()
                stream.outbox.append(share)
                stream.wake.set()
            share.append(key, token_id, logprobs)

    async def Connect(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[scheduler_pb2.SchedulerUp], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.SchedulerDown]:
        number = next(self._stream_numbers)
        stream = _Stream()
        self._streams[number] = stream
        reader = asyncio.create_task(self._read(number, stream, request_iterator))
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if reader.done() and reader.exception() is not None:
                    raise reader.exception()
                if stream.outbox:
                    events, stream.outbox = stream.outbox, []
                    yield events_to_pb(events)
                if (stream.closing or stream.upstream_done) and not stream.live and not stream.outbox:
                    return
        finally:
            reader.cancel()
            del self._streams[number]
            for request_id in list(stream.live):  # upstream gone: free what its requests hold
                self.pool.abort((number, request_id))

    async def drain(self, grace_s: float) -> None:
        """Takes no new request, lets the running ones finish within grace_s, ends the rest with UNAVAILABLE
        (freeing their blocks) and closes every Connect stream, which would otherwise stay open for good."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(s.live for s in self._streams.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for number, stream in list(self._streams.items()):
            request_ids, stream.live = list(stream.live), set()
            for request_id in request_ids:
                self.pool.abort((number, request_id))
                error = RequestFailed((number, request_id), ErrorCode.UNAVAILABLE,
                                     "the scheduler shut down before the request finished")
                self._count_error(error)
                self._end_span(error)
                stream.outbox.append(error)
            stream.closing = True
            stream.wake.set()
        end = loop.time() + CLOSE_GRACE_S
        while self._streams and loop.time() < end:  # the last messages go out
            await asyncio.sleep(0.01)

    async def _read(
        self, number: int, stream: _Stream, request_iterator: AsyncIterator[scheduler_pb2.SchedulerUp]
    ) -> None:
        try:
            async for up in request_iterator:
                if up.requests and log.isEnabledFor(logging.DEBUG):
                    # The wall clock beside the count: how a burst reaches the scheduler (bench/burst_intake.py).
                    arrivals = [pb.arrival_unix_s for pb in up.requests]
                    log.debug("stream %d: %d requests in at %.6f, at the gateway from %.6f to %.6f", number,
                              len(arrivals), time.time(), min(arrivals), max(arrivals))
                for pb in up.requests:
                    self._submit(number, stream, pb)
                for request_id in up.abort_request_ids:
                    self.pool.abort((number, request_id))
        finally:
            stream.upstream_done = True
            stream.wake.set()

    def _submit(self, number: int, stream: _Stream, pb: scheduler_pb2.TokenRequest) -> None:
        key = (number, pb.request_id)
        try:
            if self.draining:
                raise Unavailable("the scheduler is shutting down")
            if pb.request_id in stream.live:
                raise InvalidArgument(f"request id {pb.request_id!r} is already in use")
            request = request_from_pb(key, pb)
            span = self.tracing.start("scheduler", pb.traceparent, request_id=pb.request_id,
                                      prompt_tokens=len(pb.prompt_token_ids))
            if span.traceparent:
                request = dataclasses.replace(request, traceparent=span.traceparent)
            try:
                self.pool.enqueue(request)
            except FlashStreamError as exc:
                span.end(exc.message)
                raise
            if span.traceparent:
                self._spans[key] = span
            stream.live.add(pb.request_id)
        except FlashStreamError as exc:
            error = RequestFailed(key, exc.code, exc.message)
            self._count_error(error)
            stream.outbox.append(error)
            stream.wake.set()

    def _count_error(self, error: RequestFailed) -> None:
        if self.metrics is not None:
            self.metrics.scheduler_request_errors.labels(error_code_label(error.code)).inc()

    def _end_span(self, event: Event) -> None:
        span = self._spans.pop(event.key, None)
        if span is None:
            return
        if isinstance(event, RequestDone):
            span.set(finish_reason=finish_reason_label(event.finish_reason.name), queue_s=event.queue_s,
                     prefill_s=event.prefill_s, decode_s=event.decode_s, cached_tokens=event.num_cached_tokens,
                     completion_tokens=event.num_completion_tokens)
            span.end()
        else:
            span.end(event.message)

    @handle_errors
    async def Info(  # noqa: N802
        self, request: scheduler_pb2.SchedulerInfoRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SchedulerInfo:
        engines = list(self.pool.engines.engines.values())
        encoders = self.pool.embed_route.encoder_infos
        if not engines and encoders:
            info = encoders[0]
            return scheduler_pb2.SchedulerInfo(
                model_id=info.model_id, model_revision=info.model_revision,
                max_model_len=min(i.max_model_len for i in encoders), vocab_size=info.vocab_size,
                num_workers=len(encoders), task="embed", hidden_size=info.hidden_size,
            )
        if not engines:
            raise Unavailable("no worker is connected")
        limits = engines[0].limits
        return scheduler_pb2.SchedulerInfo(
            model_id=limits.model_id,
            model_revision=limits.model_revision,
            max_model_len=min(e.limits.max_model_len for e in engines),
            vocab_size=limits.vocab_size,
            num_workers=len(engines),
            block_size=limits.block_size,
            num_kv_blocks=sum(e.limits.num_kv_blocks for e in engines),
            task="generate",
            hidden_size=min((t.info.hidden_size for t in self.pool.embed_route.targets.values()), default=0),
        )

    @handle_errors
    async def Embed(  # noqa: N802
        self, request: common_pb2.EmbedTokensRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.EmbedTokensResponse:
        if self.draining:
            raise Unavailable("the scheduler is shutting down")
        return await self.pool.embed_route.embed(request, context.time_remaining())

    @handle_errors
    async def WatchEngine(  # noqa: N802
        self, request: common_pb2.WatchEngineRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.EngineState]:
        interval_s = watch_interval(request.interval_s)
        while not self.draining:
            yield engine_state_to_pb(self.pool.engines.state())
            await asyncio.sleep(interval_s)


def watch_interval(interval_s: float) -> float:
    """The interval a WatchEngine request asks for, checked; 0 means the default."""
    if interval_s == 0:
        return DEFAULT_WATCH_INTERVAL_S
    if not MIN_WATCH_INTERVAL_S <= interval_s <= 60:
        raise InvalidArgument(f"interval_s must be between {MIN_WATCH_INTERVAL_S} and 60 seconds, got {interval_s}")
    return interval_s
