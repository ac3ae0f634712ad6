"""The Tokenizer gRPC service: many upstream Connect streams multiplexed onto one scheduler stream.

Each upstream stream is a `_Session` with its own outgoing queue. New requests of one TokenizerUp are
rendered and encoded off the event loop in chunks of ENCODE_CHUNK, validated, and each chunk is forwarded as
one SchedulerUp as soon as it is encoded (the message's aborts follow in the last); their
scheduler ids are "<session number>:<request id>", so ids of different streams never collide. Each
SchedulerDown becomes at most one TokenizerDown per session, built with one batched detokenization.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from flashstream.v1 import common_pb2, scheduler_pb2, tokenizer_pb2, tokenizer_pb2_grpc

from services.common.errors import FlashStreamError, InvalidArgument, Unavailable
from services.common.grpc_server import CLOSE_GRACE_S, handle_errors
from services.common.internal_tls import InternalTls
from services.common.metrics import Metrics, finish_reason_label
from services.common.tracing import NoSpan, Span, Tracing
from services.tokenizer.embed_inputs import EmbedEncoder, EmbedInput
from services.tokenizer.intake import EncodePool, ModelLimits, PreparedRequest
from services.tokenizer.pb import (add_chunk_event, done_event, error_event, logprobs_with_text, text_input_from_pb,
                                   token_request_to_pb)
from services.tokenizer.request_state import RequestState, TextStep, step_requests
from services.tokenizer.scheduler_link import SchedulerLink

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

log = logging.getLogger(__name__)

# Requests of one TokenizerUp encoded (and sent to the scheduler) together at most.
ENCODE_CHUNK = 16


@dataclass(eq=False)
class _Session:
    """One upstream Connect stream."""

    number: int
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    scheduler_ids: set[str] = field(default_factory=set)  # its requests now at the scheduler
    closing: bool = False  # the upstream finished sending; end once its requests are done

    def send(self, down: tokenizer_pb2.TokenizerDown) -> None:
        if down.events:
            self.outbox.put_nowait(down)
        if self.closing and not self.scheduler_ids:
            self.outbox.put_nowait(None)


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(self, pool: EncodePool, scheduler_target: str, model_id: str = "", metrics: Metrics | None = None,
                 internal_token: str = "", tracing: Tracing | None = None, tls: InternalTls | None = None):
        self.tokenizer = pool.tokenizer
        self.pool = pool
        self.metrics = metrics or Metrics("tokenizer")
        self.tracing = tracing or Tracing()
        self._spans: dict[str, Span | NoSpan] = {}  # by scheduler id, while the request is live
        self._model_id_override = model_id
        self.draining = False  # set on SIGTERM: new requests get UNAVAILABLE, running ones finish
        self._session_numbers = itertools.count(1)
        self._requests: dict[str, tuple[_Session, RequestState]] = {}
        self._sessions: set[_Session] = set()  # open Connect streams
        self.link = SchedulerLink(scheduler_target, self._on_scheduler_down, self._on_scheduler_lost,
                                  internal_token=internal_token, tls=tls)
        self.embed_encoder = EmbedEncoder(self.tokenizer)

    # ---- model identity ----

    @property
    def model_id(self) -> str:
        return self._model_id_override or (self.link.info.model_id if self.link.info else "")

    @property
    def ready(self) -> bool:
        return self.link.connected.is_set()

    def _check_model(self, name: str) -> None:
        if name and name != self.model_id:
            raise InvalidArgument(f"model {name!r} is not served here; served models: [{self.model_id!r}]")

    # ---- Connect ----

    @handle_errors
    async def Connect(self, request_iterator: AsyncIterator[tokenizer_pb2.TokenizerUp],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[tokenizer_pb2.TokenizerDown]:
        session = _Session(next(self._session_numbers))
        self._sessions.add(session)
        reader = asyncio.create_task(self._read(session, request_iterator))
        try:
            while (message := await session.outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            self._sessions.discard(session)
            self._drop_session(session)

    async def drain(self, grace_s: float) -> None:
        """Takes no new request, lets the running ones finish within grace_s, ends the rest with UNAVAILABLE
        (aborting them at the scheduler) and closes every Connect stream, which would otherwise stay open."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._requests and loop.time() < deadline:
            await asyncio.sleep(0.02)
        exc = Unavailable("the tokenizer shut down before the request finished")
        aborts = []
        for session in list(self._sessions):
            sids = list(session.scheduler_ids)
            aborts += sids
            session.closing = True
            session.send(tokenizer_pb2.TokenizerDown(events=self._fail(session, sids, exc)))
        if aborts and self.ready:
            self.link.send(scheduler_pb2.SchedulerUp(abort_request_ids=aborts))
        end = loop.time() + CLOSE_GRACE_S
        while self._sessions and loop.time() < end:  # the last messages go out
            await asyncio.sleep(0.01)

    async def _read(self, session: _Session, request_iterator: AsyncIterator[tokenizer_pb2.TokenizerUp]) -> None:
        try:
            async for up in request_iterator:
                await self._handle_up(session, up)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the upstream stream broke; its requests are aborted below
            log.warning("upstream stream %d broke", session.number, exc_info=True)
        session.closing = True
        session.send(tokenizer_pb2.TokenizerDown())

    async def _handle_up(self, session: _Session, up: tokenizer_pb2.TokenizerUp) -> None:
        events: list[tokenizer_pb2.TextEvent] = []
        inputs = []
        for pb in up.requests:
            try:
                self._check_model(pb.model)
                if self.draining:
                    raise Unavailable("the tokenizer is draining")
                if not self.ready:
                    raise Unavailable("not connected to a scheduler")
                if self._sid(session, pb.request_id) in self._requests:
                    raise InvalidArgument(f"request id {pb.request_id!r} is already in use on this stream")
                inputs.append(text_input_from_pb(pb))
            except FlashStreamError as exc:
                events.append(self._error(pb.request_id, exc))
        if inputs:
            info = self.link.info
            limits = ModelLimits(info.max_model_len, info.vocab_size) if info else ModelLimits()
            # Every chunk is queued on the encode pool at once and each goes to the scheduler as soon as it is
            # encoded, so a burst's first requests reach it without waiting for the whole message's encode. A chunk
            # already encoded is taken without yielding to the event loop, whose turns are long under a burst.
            chunks = [inputs[i:i + ENCODE_CHUNK] for i in range(0, len(inputs), ENCODE_CHUNK)]
            encodes = [self.pool.prepare(chunk, limits) for chunk in chunks]
            try:
                for chunk, encode in zip(chunks, encodes):
                    forward = scheduler_pb2.SchedulerUp()
                    results = encode.result() if encode.done() else await asyncio.wrap_future(encode)
                    for request, result in zip(chunk, results):
                        if isinstance(result, FlashStreamError):
                            events.append(self._error(request.request_id, result))
                        else:
                            forward.requests.append(self._admit(session, result))
                    events += self._forward(session, forward)
            finally:
                for encode in encodes:  # the upstream stream ended while encoding: the rest is not wanted
                    encode.cancel()
        forward = scheduler_pb2.SchedulerUp()
        for request_id in up.abort_request_ids:
            sid = self._sid(session, request_id)
            if (entry := self._requests.pop(sid, None)) is not None:
                self._end_span(sid, finish_reason="abort")
                session.scheduler_ids.discard(sid)
                forward.abort_request_ids.append(sid)
                events.append(done_event(entry[1], None, common_pb2.FINISH_REASON_ABORT))
        events += self._forward(session, forward)
        session.send(tokenizer_pb2.TokenizerDown(events=events))

    def _forward(self, session: _Session, forward: scheduler_pb2.SchedulerUp) -> list[tokenizer_pb2.TextEvent]:
        """Sends `forward` to the scheduler unless it is empty; the error events of its requests when the scheduler
        stream is gone."""
        if not forward.requests and not forward.abort_request_ids:
            return []
        try:
            self.link.send(forward)
        except Unavailable as exc:
            return self._fail(session, [r.request_id for r in forward.requests], exc)
        return []

    def _admit(self, session: _Session, prepared: PreparedRequest) -> scheduler_pb2.TokenRequest:
        req = prepared.input
        state = RequestState.create(self.tokenizer, req.request_id, len(prepared.prompt_token_ids), req.options,
                                    prompt_text=prepared.prompt_text, tokenizer_s=prepared.tokenizer_s,
                                    gateway_s=req.gateway_s)
        sid = self._sid(session, req.request_id)
        self._requests[sid] = (session, state)
        session.scheduler_ids.add(sid)
        self.metrics.set_model(self.model_id)
        self.metrics.tokenize_duration.observe(prepared.tokenizer_s)
        span = self.tracing.start("tokenizer", req.traceparent, request_id=req.request_id,
                                  prompt_tokens=len(prepared.prompt_token_ids), tokenize_s=prepared.tokenizer_s)
        if span.traceparent:
            self._spans[sid] = span
        return token_request_to_pb(prepared, sid, span.traceparent)

    def _end_span(self, sid: str, error: str = "", **attributes: object) -> None:
        span = self._spans.pop(sid, None)
        if span is not None:
            span.set(**attributes)
            span.end(error)

    @staticmethod
    def _sid(session: _Session, request_id: str) -> str:
        return f"{session.number}:{request_id}"

    def _error(self, request_id: str, exc: FlashStreamError) -> tokenizer_pb2.TextEvent:
        return error_event(request_id, exc)

    def _fail(self, session: _Session, sids: list[str], exc: FlashStreamError) -> list[tokenizer_pb2.TextEvent]:
        events = []
        for sid in sids:
            if (entry := self._requests.pop(sid, None)) is not None:
                self._end_span(sid, exc.message)
                session.scheduler_ids.discard(sid)
                events.append(self._error(entry[1].request_id, exc))
        return events

    def _drop_session(self, session: _Session) -> None:
        """The upstream stream is gone: its requests are aborted at the scheduler."""
        sids = [sid for sid in session.scheduler_ids if self._requests.pop(sid, None) is not None]
        for sid in sids:
            self._end_span(sid, finish_reason="abort")
        session.scheduler_ids.clear()
        if sids and self.ready:
            self.link.send(scheduler_pb2.SchedulerUp(abort_request_ids=sids))

    # ---- scheduler events ----

    def _on_scheduler_down(self, down: scheduler_pb2.SchedulerDown) -> None:
        requests = self._requests
        chunks: dict[str, list[int]] = {}
        columns = down.tokens
        for sid, token_id in zip(columns.request_ids, columns.token_ids):
            ids = chunks.get(sid)
            if ids is None:
                if sid not in requests:
                    continue  # ended here already (aborted upstream, or stopped and then finished)
                ids = chunks[sid] = []
            ids.append(token_id)
        logprobs: dict[str, list[common_pb2.TokenLogprob]] = {}
        for item in columns.logprobs:
            sid = columns.request_ids[item.index]
            if sid in chunks:
                logprobs.setdefault(sid, []).append(item.logprob)
        terminals = {event.request_id: event for event in down.events if event.request_id in requests}
        order = list(dict.fromkeys([*chunks, *terminals]))
        steps = dict(zip(chunks, step_requests(self.tokenizer, [(self._requests[s][1], ids)
                                                                 for s, ids in chunks.items()])))
        # Each stream's events are added to its message in place: a chunk built apart and then appended would be
        # copied twice on the way (into its event, the event into the message).
        per_session: dict[_Session, tokenizer_pb2.TokenizerDown] = {}
        aborts = []
        for sid in order:
            session, state = self._requests[sid]
            down = per_session.get(session)
            if down is None:
                down = per_session[session] = tokenizer_pb2.TokenizerDown()
            if (step := steps.get(sid)) is not None:
                lps = logprobs_with_text(self.tokenizer, logprobs[sid]) if sid in logprobs else None
                add_chunk_event(down.events, state, step, lps)
                if step.stop_string is not None and sid not in terminals:
                    aborts.append(sid)
            if (terminal := terminals.get(sid)) is not None:
                self._finish(sid, session, state, terminal, down.events)
        for session, down in per_session.items():
            session.send(down)
        if aborts and self.ready:
            self.link.send(scheduler_pb2.SchedulerUp(abort_request_ids=aborts))

    def _finish(self, sid: str, session: _Session, state: RequestState, terminal: scheduler_pb2.TokenEvent,
                out: RepeatedCompositeFieldContainer[tokenizer_pb2.TextEvent]) -> None:
        """Ends a request: its last text (if any) and its terminal event are added to `out` (a message's events)."""
        del self._requests[sid]
        session.scheduler_ids.discard(sid)
        if terminal.WhichOneof("event") == "error" and not state.stopped:
            self._end_span(sid, terminal.error.message)
            out.add(request_id=state.request_id, error=terminal.error)
            return
        tail: TextStep = state.finish(self.tokenizer)
        if tail.text or tail.num_prompt_tokens is not None:
            add_chunk_event(out, state, tail)
        done = terminal.done if terminal.WhichOneof("event") == "done" else None
        reason = done.finish_reason if done is not None else common_pb2.FINISH_REASON_ABORT
        out.append(done_event(state, done, reason))
        self._end_span(sid, finish_reason=finish_reason_label(common_pb2.FinishReason.Name(reason)))

    def _on_scheduler_lost(self, exc: FlashStreamError) -> None:
        """The scheduler stream broke: every request on it fails with exc (UNAVAILABLE); the stage stays up."""
        per_session: dict[_Session, list[str]] = {}
        for sid, (session, _) in list(self._requests.items()):
            per_session.setdefault(session, []).append(sid)
        for session, sids in per_session.items():
            session.send(tokenizer_pb2.TokenizerDown(events=self._fail(session, sids, exc)))

    # ---- unary calls ----

    @handle_errors
    async def Info(self, request: tokenizer_pb2.TokenizerInfoRequest,
                   context: grpc.aio.ServicerContext) -> tokenizer_pb2.TokenizerInfo:
        info = self.link.info
        return tokenizer_pb2.TokenizerInfo(
            model_id=self.model_id,
            model_revision=info.model_revision if info else "",
            max_model_len=info.max_model_len if info else 0,
            vocab_size=info.vocab_size if info else self.tokenizer.vocab_size,
            has_chat_template=self.tokenizer.has_chat_template,
            ready=self.ready and bool(info and info.num_workers),
            task=info.task if info else "",
            hidden_size=info.hidden_size if info else 0,
            max_embed_len=self.embed_encoder.max_len(info.max_model_len if info else 0),
        )

    # ---- embeddings ----

    @handle_errors
    async def EncodeInputs(self, request: tokenizer_pb2.EncodeInputsRequest,
                           context: grpc.aio.ServicerContext) -> tokenizer_pb2.EncodeInputsResponse:
        self._check_model(request.model)
        inputs = [EmbedInput(token_ids=tuple(item.tokens.token_ids)) if item.WhichOneof("input") == "tokens"
                  else EmbedInput(text=item.text) for item in request.inputs]
        max_len = self.embed_encoder.max_len(self.link.info.max_model_len if self.link.info else 0)
        ids = await asyncio.wrap_future(self.pool.submit(self.embed_encoder.encode, inputs, max_len, request.truncate))
        return tokenizer_pb2.EncodeInputsResponse(inputs=[common_pb2.TokenIds(token_ids=i) for i in ids])

    @handle_errors
    async def Embed(self, request: common_pb2.EmbedTokensRequest,
                    context: grpc.aio.ServicerContext) -> common_pb2.EmbedTokensResponse:
        self._check_model(request.model)
        if self.draining:
            raise Unavailable("the tokenizer is draining")
        return await self.link.embed(request, context.time_remaining())

    @handle_errors
    async def WatchEngine(self, request: common_pb2.WatchEngineRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[common_pb2.EngineState]:
        async for state in self.link.watch_engine(request):
            if self.draining:
                return
            yield state
