"""gRPC side of the worker pool: one WorkerLink (a StreamLink) per worker address, each driving its Engine over
one Worker.Step stream with up to max_steps_in_flight plans in flight, opened again after its backoff when the
worker is lost (a stalled worker counts as lost: see progress_watch)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Hashable, Sequence

import grpc
from flashstream.v1 import worker_pb2, worker_pb2_grpc

from services.common.call_auth import token_metadata
from services.common.config import BackoffConfig
from services.common.errors import FlashStreamError, InvalidArgument, Unavailable
from services.common.internal_tls import InternalTls
from services.common.stream_link import StreamLink
from services.scheduler.config import SchedulerConfig, StallConfig
from services.scheduler.embed_route import EmbedRoute
from services.scheduler.engine import Engine
from services.scheduler.engine_pool import EnginePool
from services.scheduler.pb import limits_from_info, plan_to_pb, result_from_pb
from services.scheduler.progress_watch import ProgressWatch
from services.scheduler.request_events import Event, Request

log = logging.getLogger(__name__)

INFO_TIMEOUT_S = 10.0


class WorkerLink(StreamLink[worker_pb2.StepPlan, worker_pb2.StepResult]):
    """Keeps one worker connected and stepping: its Engine's plans go down the Step stream as the engine builds
    them, its results come back to the engine; an embedding worker has no stream and serves Embed only."""

    def __init__(self, address: str, pool: WorkerPool) -> None:
        super().__init__("worker", address, pool.backoff, pool.tls)
        self.pool = pool
        self.wake = asyncio.Event()  # set when the engine may have something new to schedule
        # worker_id (one per process) of the worker here that got past its first steps: connected again (after a
        # stall) it has compiled its kernels, so its first steps get no compile allowance.
        self.warm_worker_id = ""
        self._info: worker_pb2.WorkerInfo | None = None  # of the worker on the open stream
        self._engine: Engine | None = None  # None for an embedding worker
        self._progress: ProgressWatch | None = None

    async def open_stream(self, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall | None:
        stub = worker_pb2_grpc.WorkerStub(channel)
        info = await stub.Info(worker_pb2.InfoRequest(), timeout=INFO_TIMEOUT_S, metadata=self.pool.metadata)
        self._info = info
        if info.task == "embed":
            self._engine = None
            self.pool.embed_route.add(self.address, stub, info)
            return None
        self._engine = self.pool.engines.add_worker(self.address, limits_from_info(info))
        self.pool.embed_route.add(self.address, stub, info)
        # The block table lives as long as the connection (one object per KV block): keep the cyclic garbage
        # collector from walking it on every full collection.
        gc.freeze()
        warm = bool(info.worker_id) and info.worker_id == self.warm_worker_id
        self._progress = ProgressWatch(self.pool.stall, warm=warm)
        return stub.Step(metadata=self.pool.metadata)

    def on_open(self) -> None:
        info = self._info
        if self._engine is None:
            log.info("embedding worker %s connected (%s, %s)", self.address, info.worker_id, info.model_id)
        else:
            log.info("worker %s connected (%s: %s, %s on %s, %d KV blocks of %d tokens)", self.address,
                     info.worker_id, info.architecture, info.dtype, info.device, info.num_kv_blocks,
                     info.block_size)
        self.pool.notify_workers_changed()

    async def next_message(self) -> worker_pb2.StepPlan:
        """The engine's next plan, once it has one (new requests, results back, a deadline)."""
        engine, progress = self._engine, self._progress
        while True:
            self.wake.clear()
            start = time.perf_counter()
            plan = engine.build_plan()
            self.pool.flush(engine)  # deadline expiries found while scheduling
            if plan is not None:
                message = plan_to_pb(plan)
                if self.pool.metrics is not None:
                    self.pool.metrics.schedule_duration.observe(time.perf_counter() - start)
                progress.sent(plan)
                return message
            deadline = engine.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time()) + 0.001
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                pass

    def on_message(self, message: worker_pb2.StepResult) -> None:
        self._progress.returned()
        self._engine.process_result(result_from_pb(message))
        self.pool.flush(self._engine)
        self.wake.set()

    async def watch(self) -> None:
        await self._progress.watch(self.address)

    def lost_error(self, reason: str) -> FlashStreamError:
        return Unavailable(f"worker {self.address} disconnected")

    def on_lost(self, error: FlashStreamError) -> None:
        """Its requests without a token yet go to the other workers; the rest fail with error (UNAVAILABLE)."""
        self.pool.embed_route.remove(self.address)
        if self._engine is not None:
            if self._progress.past_first_steps:
                self.warm_worker_id = self._info.worker_id
            self.pool.dispatch(self.pool.engines.remove_worker(self.address, error.message))
            self.pool.wake_all()
        self._engine = self._progress = None
        self.pool.notify_workers_changed()


class WorkerPool:
    """Every worker connection of one model pool, and the EnginePool that routes requests among them."""

    def __init__(
        self,
        addresses: Sequence[str],
        config: SchedulerConfig,
        backoff: BackoffConfig | None = None,
        metrics=None,  # noqa: ANN001 - services.common.metrics.Metrics
        stall: StallConfig | None = None,
        internal_token: str = "",
        tls: InternalTls | None = None,
    ) -> None:
        self.engines = EnginePool(config, metrics)
        self.embed_route = EmbedRoute(token_metadata(internal_token))
        self.metrics = metrics
        self.backoff = backoff or BackoffConfig()
        self.stall = stall or StallConfig()
        self.metadata = token_metadata(internal_token)  # sent on every call to a worker
        self.tls = tls  # mutual TLS to the workers; None: plaintext
        self.connections = {address: WorkerLink(address, self) for address in addresses}
        self.on_events: Callable[[list[Event]], None] = lambda events: None
        self.on_workers_changed: Callable[[int], None] = lambda num_workers: None
        self.leaving: dict[str, asyncio.Task] = {}  # drain task by address of a worker that left the membership
        self.drain_timeout_s = 30.0  # how long a leaving worker keeps its running requests before they fail

    @property
    def num_workers(self) -> int:
        """Workers connected now: generation workers and embedding-only ones."""
        return len(self.engines.engines) + len(self.embed_route.encoder_infos)

    def start(self) -> None:
        for link in self.connections.values():
            link.start()

    async def stop(self) -> None:
        for task in self.leaving.values():
            task.cancel()
        await asyncio.gather(*self.leaving.values(), return_exceptions=True)
        self.leaving = {}
        await asyncio.gather(*(link.close() for link in self.connections.values()))

    # ---- membership at run time ----

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """The workers of the pool from now on. A new address is dialled at once; an address no longer listed
        leaves: it gets no new request, its running requests finish (or fail with UNAVAILABLE after
        drain_timeout_s), then its connection closes. An address listed again before it has gone stays."""
        wanted = list(dict.fromkeys(addresses))
        for address in wanted:
            if address in self.leaving:
                self.leaving.pop(address).cancel()
                self.engines.draining.discard(address)
                log.info("worker %s stays in the pool", address)
            elif address not in self.connections:
                self.connections[address] = link = WorkerLink(address, self)
                link.start()
                log.info("worker %s joins the pool", address)
        for address in list(self.connections):
            if address not in wanted and address not in self.leaving:
                self.engines.draining.add(address)
                self.leaving[address] = asyncio.create_task(self._leave(address), name=f"worker {address} leaving")
                log.info("worker %s leaves the pool once its requests end", address)

    async def _leave(self, address: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while (engine := self.engines.engines.get(address)) is not None and engine.num_requests:
            if loop.time() >= deadline:
                log.warning("worker %s left with %d requests running", address, engine.num_requests)
                break
            await asyncio.sleep(0.05)
        await self.connections[address].close()  # its on_lost removes the engine and fails the rest
        del self.connections[address]
        self.engines.draining.discard(address)
        self.leaving.pop(address, None)
        log.info("worker %s left the pool", address)

    def enqueue(self, request: Request) -> None:
        """Queues a request on the best worker (raises a FlashStreamError when it cannot be taken)."""
        encoders = self.embed_route.encoder_infos
        if encoders and not self.engines.engines:
            raise InvalidArgument(f"model {encoders[0].model_id} is an embedding model: it cannot generate")
        name = self.engines.route(request)
        self.connections[name].wake.set()

    def abort(self, key: Hashable) -> None:
        name = self.engines.abort(key)
        if name is not None:
            self.flush(self.engines.engines[name])
            self.connections[name].wake.set()

    def flush(self, engine: Engine) -> None:
        """Hands the engine's new events upstream and refreshes the load gauges."""
        events = self.engines.take_events(engine)
        if events:
            self.on_events(events)
        if self.metrics is not None:
            self.metrics.num_requests_running.set(self.engines.num_running)
            self.metrics.num_requests_waiting.set(self.engines.num_waiting)
            self.metrics.kv_cache_usage_ratio.set(self.engines.kv_cache_usage)

    def wake_all(self) -> None:
        """Every connection schedules again (requests moved to their engines)."""
        for link in self.connections.values():
            link.wake.set()

    def dispatch(self, events: list[Event]) -> None:
        if events:
            self.on_events(events)

    def notify_workers_changed(self) -> None:
        self.on_workers_changed(self.num_workers)
