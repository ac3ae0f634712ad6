"""The gateway's core: model routing, validation against the model, deadlines and per-request bookkeeping.

No gRPC and no JSON: the public layers build a `GenerationRequest`, call `GatewayCore.start`, and iterate
the returned `Generation` (text deltas, then one `Finished`; failures raise `FlashStreamError`). Closing a
generation that has not finished aborts it upstream, so a client that goes away frees its work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Protocol

from gateway.errors import ModelNotFound, RequestError
from gateway.schema import Event, Finished, GenerationRequest, ModelCard, Submission, TextDelta, Usage, merge_deltas
from services.common.errors import DeadlineExceeded, ErrorCode, FlashStreamError, Unavailable
from services.common.finish_reason import FinishReason
from services.common.metrics import Metrics, MetricsView, error_code_label, finish_reason_label
from services.common.tracing import NoSpan, Span, Tracing

log = logging.getLogger(__name__)


class RequestHandle(Protocol):
    """One submitted request's event source (the tokenizer client implements it)."""

    @property
    def replayed(self) -> bool:
        """Its tokens were generated for another request (a stored answer, or an identical request in flight), so
        their arrival says nothing of generation speed; known by the time the first event arrives."""
        ...

    async def next(self) -> Event | FlashStreamError: ...

    def next_nowait(self) -> Event | FlashStreamError | None:
        """The next event if one is already queued, else None."""
        ...

    def abort(self) -> None: ...


class Router(Protocol):
    """Where requests go: the tokenizer replicas of every served model."""

    @property
    def ready(self) -> bool: ...

    def cards(self) -> list[ModelCard]: ...

    def forward(self, submission: Submission) -> RequestHandle:
        """Sends the request upstream (or answers it from a cache) and returns its handle."""
        ...


class GatewayCore:
    """Validates and routes public requests; tracks the ones running."""

    def __init__(self, router: Router, metrics: Metrics, request_timeout_s: float = 600.0,
                 tracing: Tracing | None = None) -> None:
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {request_timeout_s}")
        self.router = router
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        self.request_timeout_s = request_timeout_s
        self.draining = False
        self.num_running = 0

    def is_ready(self) -> bool:
        return not self.draining and self.router.ready

    def list_models(self) -> list[ModelCard]:
        return sorted(self.router.cards(), key=lambda card: card.id)

    def resolve_model(self, name: str) -> ModelCard:
        """The card of `name`; an empty name means the only model."""
        cards = self.list_models()
        if not cards:
            raise Unavailable("no tokenizer has reported its model yet; retry shortly")
        if not name:
            if len(cards) == 1:
                return cards[0]
            served = ", ".join(card.id for card in cards)
            raise RequestError(f"model is required: this gateway serves {served}", "model", "missing_required_parameter")
        for card in cards:
            if card.id == name:
                return card
        served = ", ".join(card.id for card in cards)
        raise ModelNotFound(f"The model '{name}' does not exist; this gateway serves: {served}")

    def served_model(self, name: str) -> str:
        """The id of the model `name` resolves to, or "" when it names none (for labels, never raises)."""
        try:
            return self.resolve_model(name).id
        except FlashStreamError:
            return ""

    def record_error(self, exc: FlashStreamError, model: str = "") -> None:
        """Counts an error returned to a client (also for errors raised before `start`); once per error.
        `model`: the served model the request named, "" when unknown."""
        if getattr(exc, "counted", False):
            return
        exc.counted = True  # type: ignore[attr-defined]
        self.metrics.for_model(model).request_errors.labels(error_code_label(exc.code)).inc()

    def start(self, request: GenerationRequest, time_limit_s: float | None = None, tenant: str = "",
              traceparent: str = "") -> Generation:
        """Validates `request` against its model and submits it; raises FlashStreamError on bad input.
        `tenant` (a hash of the caller's API key) keeps result cache entries apart per caller; `traceparent` (the
        client's W3C trace context, if any) is the parent of the request's gateway span."""
        start = time.perf_counter()
        model = ""
        span = self.tracing.start("gateway", traceparent)
        try:
            if self.draining:
                raise Unavailable("the gateway is shutting down; retry on another replica")
            card = self.resolve_model(request.model)
            model = card.id
            self._check_fits(request, card)
            timeout_s = request.timeout_s or self.request_timeout_s
            if time_limit_s is not None:
                timeout_s = min(timeout_s, max(time_limit_s, 0.0))
            prefix = "chatcmpl-" if request.is_chat else "cmpl-"
            arrival = time.time()
            submission = Submission(
                request_id=prefix + uuid.uuid4().hex,
                request=dataclasses.replace(request, model=card.id),
                arrival_unix_s=arrival,
                deadline_unix_s=arrival + timeout_s,
                gateway_s=time.perf_counter() - start,
                tenant=tenant,
                traceparent=span.traceparent,
            )
            span.set(request_id=submission.request_id, model=card.id)
            handle = self.router.forward(submission)
        except FlashStreamError as exc:
            self.record_error(exc, model)
            span.end(exc.message)
            raise
        deadline = asyncio.get_running_loop().time() + timeout_s
        return Generation(self, submission, handle, card, start, deadline, timeout_s, span)

    @staticmethod
    def _check_fits(request: GenerationRequest, card: ModelCard) -> None:
        if card.task == "embed":
            raise RequestError(f"model '{card.id}' is an embedding model; call the embeddings API instead", "model",
                               "model_not_supported")
        if request.is_chat and not card.has_chat_template:
            raise RequestError(
                f"model '{card.id}' has no chat template; send a completion request instead", "messages"
            )
        # Sampling against the model, on entry. The prompt's length and ids are checked once, where they are
        # known for every kind of prompt: in the tokenizer stage (services/tokenizer/intake.py).
        sampling = request.sampling
        if card.max_model_len and not sampling.fill_context and sampling.max_tokens + 1 > card.max_model_len:
            raise RequestError(
                f"max_tokens ({sampling.max_tokens}) plus the prompt (1 token(s) at least) exceeds "
                f"the context of model '{card.id}' ({card.max_model_len} tokens)",
                "max_tokens",
            )
        if sampling.logit_bias and card.vocab_size:
            bad_ids = [t for t, _ in sampling.logit_bias if t >= card.vocab_size]
            if bad_ids:
                raise RequestError(
                    f"logit_bias token ids must be below the vocabulary size {card.vocab_size}, got {bad_ids[0]}",
                    "logit_bias",
                )

    def _begin(self, metrics: MetricsView) -> None:
        self.num_running += 1
        metrics.num_requests_in_flight.inc()

    def _end(self, metrics: MetricsView) -> None:
        self.num_running -= 1
        metrics.num_requests_in_flight.dec()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no request runs (for drain); False if some still run after timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.num_running and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.num_running == 0


class Generation:
    """A running request: iterate it for `TextDelta`s and one `Finished`; `close()` it in a finally."""

    def __init__(
        self,
        core: GatewayCore,
        submission: Submission,
        handle: RequestHandle,
        card: ModelCard,
        start_perf: float,
        deadline_loop: float,
        timeout_s: float,
        span: Span | NoSpan,
    ) -> None:
        self.request_id = submission.request_id
        self.model = card.id
        self.created = int(submission.arrival_unix_s)
        self.submission = submission
        self.num_prompt_tokens = 0  # from the first event that reports it
        self.num_completion_tokens = 0  # tokens delivered so far, for usage when the request fails midway
        self._core = core
        self._handle = handle
        self._start = start_perf
        self._last_token: float | None = None
        self._deadline = deadline_loop
        self._timeout_s = timeout_s
        # One timer for the request's deadline, armed at its first wait (not a timeout entered for every event):
        # when it fires, the task waiting for the next event (if one is) is cancelled and sees the deadline.
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._waiting: asyncio.Task | None = None
        self._ended = False
        self._held: Event | FlashStreamError | None = None  # read while coalescing, returned next
        self._metrics = core.metrics.for_model(card.id)
        self._span = span
        core._begin(self._metrics)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        item = await self._next_nonempty()
        now = time.perf_counter()
        metrics = self._metrics
        if isinstance(item, FlashStreamError):
            self._finish()
            self._core.record_error(item, self.model)
            self._span.end(item.message)
            raise item
        if isinstance(item, Finished):
            self._finish()
            metrics.e2e_request_latency.observe(now - self._start)
            metrics.requests_finished.labels(finish_reason_label(item.finish_reason.name)).inc()
            self._span.set(finish_reason=finish_reason_label(item.finish_reason.name),
                           prompt_tokens=item.usage.prompt_tokens, completion_tokens=item.usage.completion_tokens,
                           result_cached=item.usage.result_cached)
            self._span.end()
            latency = dataclasses.replace(item.latency, gateway_s=self.submission.gateway_s)
            return dataclasses.replace(item, latency=latency)
        self.num_completion_tokens += len(item.token_ids)
        if item.token_ids or item.text:
            # A merged delta carries several tokens: its gap is spread evenly over them, so the histogram gets
            # one observation per token after the first; replayed tokens were not generated here and give none.
            num_tokens = max(len(item.token_ids), 1)
            if self._last_token is None:
                metrics.time_to_first_token.observe(now - self._start)
                gap, count = 0.0, num_tokens - 1
            else:
                gap, count = (now - self._last_token) / num_tokens, num_tokens
            if not self._handle.replayed:
                for _ in range(count):
                    metrics.inter_token_latency.observe(gap)
            self._last_token = now
        return item

    async def _next_nonempty(self) -> Event | FlashStreamError:
        """The next event, skipping deltas with nothing in them (a tokenizer may send one to report
        num_prompt_tokens before any text); a passed deadline aborts upstream and becomes the error.

        Deltas already queued behind it are merged into it: a client that reads slower than tokens
        arrive gets fewer, larger chunks instead of a backlog of one message per token."""
        if self._held is not None:
            item, self._held = self._held, None
            return self._worded(item)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(self._deadline, self._expire)
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        self._waiting = task
        try:
            while not self._expired:
                item = await self._handle.next()
                if not isinstance(item, TextDelta):
                    return self._worded(item)
                self.num_prompt_tokens = item.num_prompt_tokens or self.num_prompt_tokens
                if item.text or item.token_ids or item.logprobs:
                    return self._merge_queued(item)
        except asyncio.CancelledError:
            # Ours only if the deadline fired and nobody else cancelled the task meanwhile (asyncio.timeout's rule).
            if not self._expired or task is None or task.uncancel() > cancelling:
                raise
        finally:
            self._waiting = None
        self._handle.abort()
        return self._deadline_error()

    def _expire(self) -> None:
        """The deadline passed: the wait for the next event (now, or the next one) ends with DEADLINE_EXCEEDED."""
        self._expired = True
        if self._waiting is not None:
            self._waiting.cancel()

    def _deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"request {self.request_id} passed its deadline of {self._timeout_s:g} s")

    def _worded(self, item: Event | FlashStreamError) -> Event | FlashStreamError:
        """item, except that a deadline which a later stage noticed first (its clock started at arrival, the gateway's
        a little later) reads the same as one the gateway noticed: the client's timeout is known here."""
        late = isinstance(item, FlashStreamError) and item.code == ErrorCode.DEADLINE_EXCEEDED
        return self._deadline_error() if late else item

    def _merge_queued(self, delta: TextDelta) -> TextDelta:
        """delta plus every TextDelta already queued after it; a terminal event found there is held."""
        deltas = [delta]
        while (following := self._handle.next_nowait()) is not None:
            if not isinstance(following, TextDelta):
                self._held = following
                break
            deltas.append(following)
        merged = merge_deltas(deltas)
        self.num_prompt_tokens = merged.num_prompt_tokens or self.num_prompt_tokens
        return merged

    @property
    def has_event_ready(self) -> bool:
        """The next event is already here: iterating will not wait."""
        return self._held is not None

    def usage_so_far(self) -> Usage:
        """What this request has used until now (for an answer that ends with an error after some text)."""
        return Usage(self.num_prompt_tokens, self.num_completion_tokens)

    def close(self) -> None:
        """Aborts the request upstream unless it already ended (client gone, handler cancelled)."""
        if self._ended:
            return
        self._handle.abort()
        self._finish()
        self._metrics.requests_finished.labels(finish_reason_label(FinishReason.ABORT.name)).inc()
        self._span.set(finish_reason=finish_reason_label(FinishReason.ABORT.name))
        self._span.end()

    def _finish(self) -> None:
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        self._core._end(self._metrics)
