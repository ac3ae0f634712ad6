"""The Worker gRPC servicer: converts messages and runs the core off the event loop, one thread for the model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from flashstream.v1 import worker_pb2, worker_pb2_grpc

from services.common.errors import Unavailable
from services.common.grpc_server import handle_errors
from services.common.metrics import Metrics
from services.worker.engine import Engine
from services.worker.pb import info_to_pb, result_to_pb
from services.worker.plan_inbox import PlanInbox

log = logging.getLogger(__name__)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Info, Step and Embed over one Engine; the engine is set once the model and KV cache are ready."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.engine: Engine | None = None
        self.metrics = metrics or Metrics("worker")
        # One thread owns the model: steps of every stream and embeddings run one at a time, in arrival order.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-model")
        self.draining = False
        self.num_streams = 0

    def _ready_engine(self) -> Engine:
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
        table = engine.runner.new_table()  # sequence ids are unique per stream, so state is too
        loop = asyncio.get_running_loop()
        self.num_streams += 1
        inbox = PlanInbox()
        reader = asyncio.create_task(inbox.fill(request_iterator))
        try:
            while (item := await inbox.get()) is not None:
                plan, errors = item
                # While this plan's step runs on the device, the runner may take a look at the next one.
                result = await loop.run_in_executor(
                    self.executor, engine.runner.step, plan, table, None, inbox.peek_plan
                )
                result.errors[:0] = errors
                self._record_step(engine, result.step_time_s, len(result.outputs), len(table))
                yield result_to_pb(result)
        finally:
            reader.cancel()
            self.num_streams -= 1
            log.info("step stream closed; dropping its %d sequences", len(table))

    def _record_step(self, engine: Engine, step_time_s: float, num_sampled: int, num_live: int) -> None:
        m = self.metrics
        shape = engine.runner.last_shape
        m.step_duration.labels(m.stage, shape.kind).observe(step_time_s)
        m.step_tokens.labels(m.stage, "prefill").observe(shape.num_prefill_tokens)
        m.step_tokens.labels(m.stage, "decode").observe(shape.num_decode_seqs)
        m.step_sequences.labels(m.stage, "prefill").observe(shape.num_prefill_seqs)
        m.step_sequences.labels(m.stage, "decode").observe(shape.num_decode_seqs)
        m.device_idle.inc(engine.runner.take_device_idle_s())
        m.generation_tokens.inc(num_sampled)
        m.num_requests_running.set(num_live)

    @handle_errors
    async def Embed(
        self, request: worker_pb2.EmbedTokensRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EmbedTokensResponse:
        engine = self._ready_engine()
        inputs = [list(item.token_ids) for item in request.inputs]
        vectors = await asyncio.get_running_loop().run_in_executor(
            self.executor, engine.embed, inputs, request.normalize
        )
        return worker_pb2.EmbedTokensResponse(embeddings=[worker_pb2.Embedding(values=v) for v in vectors])

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
