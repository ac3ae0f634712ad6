"""The Worker gRPC servicer: converts messages and runs the core off the event loop, one thread for the model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from flashstream.v1 import common_pb2, worker_pb2, worker_pb2_grpc

from services.common.errors import InvalidArgument, Unavailable
from services.common.grpc_server import CLOSE_GRACE_S, handle_errors
from services.common.metrics import Metrics
from services.common.step import StepResult
from services.common.tracing import Tracing
from services.worker.engine import WorkerEngine
from services.worker.pb import info_to_pb, result_to_pb
from services.worker.plan_inbox import PlanInbox
from services.worker.runner import StepShape
from services.worker.sequences import SequenceTable

if TYPE_CHECKING:
    from services.worker.kernel_profile import KernelProfile  # imports torch, which fake mode does without

log = logging.getLogger(__name__)

# A step running longer than this makes /ready false: far beyond any real step, short of a kernel compile.
STUCK_STEP_S = 30.0
_END = object()  # posted by the model thread after a Step stream's last job


@dataclass(frozen=True, slots=True)
class StepDone:
    """A step's outcome as the model thread hands it to the event loop: its result and what the metrics record
    (read on the model thread, before the next step replaces them)."""

    result: StepResult
    shape: StepShape
    device_idle_s: float


@dataclass(frozen=True, slots=True)
class OpenStream:
    """A Step stream being served: its plans, its sequences and the task reading its plans."""

    inbox: PlanInbox
    table: SequenceTable
    reader: asyncio.Task

    def close(self) -> None:
        """Drops the plans not yet run and stops reading; the reader's last job then ends the stream."""
        self.inbox.close()
        self.reader.cancel()


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Info, Step and Embed over one WorkerEngine; the engine is set once the model and KV cache are ready."""

    def __init__(self, metrics: Metrics | None = None, tracing: Tracing | None = None,
                 stuck_step_s: float = STUCK_STEP_S) -> None:
        self.engine: WorkerEngine | None = None
        self.stuck_step_s = stuck_step_s
        self.step_started: float | None = None  # monotonic time the running step began; None between steps
        self.metrics = metrics or Metrics("worker")
        self.tracing = tracing or Tracing()
        # One thread owns the model: steps of every stream and embeddings run one at a time, in arrival order.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-model")
        self.draining = False
        self._streams: dict[PlanInbox, OpenStream] = {}  # each open Step stream, by its inbox
        self.kernel_profile: KernelProfile | None = None  # a traced window of steps, when asked for

    def _ready_engine(self) -> WorkerEngine:
        if self.engine is None:
            raise Unavailable("the worker is still loading its model")
        if self.draining:
            raise Unavailable("the worker is draining")
        return self.engine

    @handle_errors
    async def Info(self, request: worker_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> worker_pb2.WorkerInfo:
        if self.engine is None:
            raise Unavailable("the worker is still loading its model")
        return info_to_pb(self.engine.info)

    @handle_errors
    async def Step(
        self, request_iterator: AsyncIterator[worker_pb2.StepPlan], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.StepResult]:
        engine = self._ready_engine()
        if engine.runner is None:
            raise InvalidArgument(f"model {engine.info.model_id} is an embedding model: it serves Embed, not Step")
        table = engine.runner.new_table()  # sequence ids are unique per stream, so state is too
        loop = asyncio.get_running_loop()
        inbox = PlanInbox()
        # What the model thread hands back, in plan order: a step's outcome, or _END once the stream has ended.
        done: asyncio.Queue[StepDone | BaseException | object] = asyncio.Queue()

        def post(item: StepDone | BaseException | object) -> None:
            loop.call_soon_threadsafe(done.put_nowait, item)

        def on_plan() -> None:
            # Each plan becomes a job on the model thread at once, queued behind the steps before it: the thread
            # goes from one step to the next without waiting for the event loop or for a result to be sent.
            self.executor.submit(self._step_next, engine, table, inbox, post)

        reader = asyncio.create_task(self._read(inbox, request_iterator, on_plan, post))
        stream = OpenStream(inbox, table, reader)
        self._streams[inbox] = stream
        try:
            while (item := await done.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                self._record_step(item)
                yield result_to_pb(item.result)
            if inbox.error is not None:
                raise inbox.error
        finally:
            stream.close()
            del self._streams[inbox]
            log.info("step stream closed; dropping its %d sequences", len(table))

    async def _read(self, inbox: PlanInbox, request_iterator: AsyncIterator[worker_pb2.StepPlan],
                    on_plan: Callable[[], None], post: Callable[[object], None]) -> None:
        """Fills the inbox; once the stream ends (or is closed by a drain), a last job behind every step job
        posts _END."""
        try:
            await inbox.fill(request_iterator, on_plan)
        finally:
            try:
                self.executor.submit(post, _END)
            except RuntimeError:  # the executor is shut down (the worker is stopping): no job will run again
                post(_END)

    def _step_next(self, engine: WorkerEngine, table: SequenceTable, inbox: PlanInbox,
                   post: Callable[[object], None]) -> None:
        """One job on the model thread: the stream's oldest plan, stepped; its outcome posted to the event loop."""
        plan = inbox.take()
        if plan is None:  # the stream was closed
            return
        # A traced sequence's first step on this worker (its prompt, or the part not cached) is its span.
        spans = [self.tracing.start("worker", new.traceparent, seq_id=new.seq_id,
                                    computed_tokens=new.num_computed_tokens,
                                    scheduled_tokens=new.num_scheduled_tokens, step_id=plan.step_id)
                 for new in plan.new_seqs if new.traceparent and self.tracing.enabled]
        self.step_started = time.monotonic()
        try:
            # While this plan's step runs on the device, the runner may take a look at the next one.
            result = engine.runner.step(plan, table, None, inbox.peek_plan)
            if self.kernel_profile is not None:
                self.kernel_profile.after_step()
            runner = engine.runner
            post(StepDone(result, runner.last_shape, runner.take_device_idle_s()))
        except Exception as exc:  # noqa: BLE001 - fails this stream, as the step's exception did on the loop
            inbox.close()
            post(exc)
        finally:
            self.step_started = None
            for span in spans:
                span.end()

    def step_stuck(self) -> bool:
        """Whether the running step has taken longer than stuck_step_s (a hung device or kernel)."""
        started = self.step_started
        return started is not None and time.monotonic() - started > self.stuck_step_s

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    async def drain(self, grace_s: float) -> None:
        """Lets the scheduler finish its sequences here within grace_s, then ends every Step stream (the scheduler
        then fails or re-queues what is left, as for a lost worker)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(len(stream.table) for stream in self._streams.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for stream in list(self._streams.values()):
            stream.close()
        end = loop.time() + CLOSE_GRACE_S
        while self._streams and loop.time() < end:
            await asyncio.sleep(0.01)

    def _record_step(self, done: StepDone) -> None:
        m = self.metrics
        shape = done.shape
        m.step_duration.labels(shape.kind).observe(done.result.step_time_s)
        m.step_tokens.labels("prefill").observe(shape.num_prefill_tokens)
        m.step_tokens.labels("decode").observe(shape.num_decode_seqs)
        m.step_sequences.labels("prefill").observe(shape.num_prefill_seqs)
        m.step_sequences.labels("decode").observe(shape.num_decode_seqs)
        m.device_idle.inc(done.device_idle_s)
        if shape.queued_ahead:
            m.steps_queued_ahead.inc()
        m.next_plan_wait.inc(shape.next_plan_wait_s)

    @handle_errors
    async def Embed(
        self, request: common_pb2.EmbedTokensRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.EmbedTokensResponse:
        engine = self._ready_engine()
        inputs = [list(item.token_ids) for item in request.inputs]
        normalize = request.normalize if request.HasField("normalize") else None
        # Embeddings queue on the model thread between steps: one forward pass per request, no KV blocks kept.
        vectors = await asyncio.get_running_loop().run_in_executor(
            self.executor, engine.embed, inputs, normalize, request.dimensions
        )
        return common_pb2.EmbedTokensResponse(embeddings=[common_pb2.Embedding(values=v) for v in vectors])

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
