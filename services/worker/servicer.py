"""The Worker gRPC servicer: converts messages and runs the core off the event loop, one thread for the model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from flashstream.v1 import common_pb2, worker_pb2, worker_pb2_grpc

from services.common.errors import InvalidArgument, Unavailable
from services.common.grpc_server import CLOSE_GRACE_S, handle_errors
from services.common.metrics import Metrics
from services.common.step import StepPlan, StepResult
from services.common.tracing import Tracing
from services.worker.engine import WorkerEngine
from services.worker.pb import info_to_pb, result_to_pb
from services.worker.plan_inbox import PlanInbox
from services.worker.runner import PlanSource
from services.worker.sequences import SequenceTable

if TYPE_CHECKING:
    from services.worker.kernel_profile import KernelProfile  # imports torch, which fake mode does without

log = logging.getLogger(__name__)

# A step running longer than this makes /ready false: far beyond any real step, short of a kernel compile.
STUCK_STEP_S = 30.0


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
        self._streams: dict[PlanInbox, SequenceTable] = {}  # each open Step stream's inbox → its sequence table
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
        self._streams[inbox] = table
        reader = asyncio.create_task(inbox.fill(request_iterator))
        try:
            while (plan := await inbox.get()) is not None:
                # A traced sequence's first step on this worker (its prompt, or the part not cached) is its span.
                spans = [self.tracing.start("worker", new.traceparent, seq_id=new.seq_id,
                                            computed_tokens=new.num_computed_tokens,
                                            scheduled_tokens=new.num_scheduled_tokens, step_id=plan.step_id)
                         for new in plan.new_seqs if new.traceparent and self.tracing.enabled]
                # While this plan's step runs on the device, the runner may take a look at the next one.
                self.step_started = time.monotonic()
                try:
                    result = await loop.run_in_executor(self.executor, self._step, engine, plan, table,
                                                        inbox.peek_plan)
                finally:
                    self.step_started = None
                for span in spans:
                    span.end()
                self._record_step(engine, result.step_time_s)
                yield result_to_pb(result)
        finally:
            reader.cancel()
            del self._streams[inbox]
            log.info("step stream closed; dropping its %d sequences", len(table))

    def _step(self, engine: WorkerEngine, plan: StepPlan, table: SequenceTable, peek: PlanSource) -> StepResult:
        """One step on the model thread (and the kernel profile's window, which must open and close there)."""
        result = engine.runner.step(plan, table, None, peek)
        if self.kernel_profile is not None:
            self.kernel_profile.after_step()
        return result

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
        while any(len(table) for table in self._streams.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for inbox in list(self._streams):
            inbox.close()
        end = loop.time() + CLOSE_GRACE_S
        while self._streams and loop.time() < end:
            await asyncio.sleep(0.01)

    def _record_step(self, engine: WorkerEngine, step_time_s: float) -> None:
        m = self.metrics
        shape = engine.runner.last_shape
        m.step_duration.labels(shape.kind).observe(step_time_s)
        m.step_tokens.labels("prefill").observe(shape.num_prefill_tokens)
        m.step_tokens.labels("decode").observe(shape.num_decode_seqs)
        m.step_sequences.labels("prefill").observe(shape.num_prefill_seqs)
        m.step_sequences.labels("decode").observe(shape.num_decode_seqs)
        m.device_idle.inc(engine.runner.take_device_idle_s())

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
