"""gRPC side of the worker pool: one connection per worker address, each driving its Engine over one
Worker.Step stream with up to two plans in flight, reconnecting with backoff when the worker is lost."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Hashable, Sequence

import grpc
from flashstream.v1 import worker_pb2, worker_pb2_grpc

from services.common.call_auth import token_metadata
from services.common.errors import InvalidArgument
from services.common.grpc_server import create_channel
from services.common.internal_tls import InternalTls
from services.scheduler.config import BackoffConfig, SchedulerConfig, StallConfig
from services.scheduler.embed_route import EmbedRoute
from services.scheduler.engine import Engine
from services.scheduler.engine_pool import EnginePool
from services.scheduler.pb import limits_from_info, plan_to_pb, result_from_pb
from services.scheduler.progress_watch import ProgressWatch, WorkerStalled
from services.scheduler.request_events import Event, Request

log = logging.getLogger(__name__)

INFO_TIMEOUT_S = 10.0


class WorkerConnection:
    """Keeps one worker connected and stepping."""

    def __init__(self, address: str, pool: WorkerPool) -> None:
        self.address = address
        self.pool = pool
        self.wake = asyncio.Event()  # set when the engine may have something new to schedule
        self.num_connects = 0
        # worker_id (one per process) of the worker here that got past its first steps: connected again (after a
        # stall) it has compiled its kernels, so its first steps get no compile allowance.
        self.warm_worker_id = ""

    async def run(self) -> None:
        backoff = self.pool.backoff
        delay = backoff.initial_s
        while True:
            channel = create_channel(self.address, self.pool.tls)
            connected = False
            lost = f"worker {self.address} disconnected"
            try:
                stub = worker_pb2_grpc.WorkerStub(channel)
                info = await stub.Info(worker_pb2.InfoRequest(), timeout=INFO_TIMEOUT_S, metadata=self.pool.metadata)
                if info.task == "embed":
                    await self._serve_embeddings_only(channel, stub, info)
                    continue
                engine = self.pool.engines.add_worker(self.address, limits_from_info(info))
                self.pool.embed_route.add(self.address, stub, info)
                # The block table lives as long as the connection (one object per KV block): keep the
                # cyclic garbage collector from walking it on every full collection.
                gc.freeze()
                connected = True
                self.num_connects += 1
                delay = backoff.initial_s
                log.info("worker %s connected (%s: %s, %s on %s, %d KV blocks of %d tokens)", self.address,
                         info.worker_id, info.architecture, info.dtype, info.device, info.num_kv_blocks,
                         info.block_size)
                self.pool.notify_workers_changed()
                await self._serve(engine, stub.Step(metadata=self.pool.metadata), info.worker_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means the worker is lost; retry
                reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                if isinstance(exc, WorkerStalled):
                    reason = lost = exc.message
                if connected:
                    log.warning("worker %s lost: %s", self.address, reason)
                else:
                    log.debug("worker %s not reachable: %s", self.address, reason)
            finally:
                self.pool.embed_route.remove(self.address)
                if connected:
                    # Its requests without a token yet go to the other workers; the rest fail with UNAVAILABLE.
                    self.pool.dispatch(self.pool.engines.remove_worker(self.address, lost))
                    self.pool.wake_all()
                    self.pool.notify_workers_changed()
                await channel.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, backoff.max_s)

    async def _serve_embeddings_only(
        self, channel: grpc.aio.Channel, stub: worker_pb2_grpc.WorkerStub, info: worker_pb2.WorkerInfo
    ) -> None:
        """An encoder worker has no step stream: it serves Embed until its channel fails, then reconnects."""
        self.pool.embed_route.add(self.address, stub, info)
        self.pool.notify_workers_changed()
        log.info("embedding worker %s connected (%s, %s)", self.address, info.worker_id, info.model_id)
        try:
            state = channel.get_state(try_to_connect=True)
            while state not in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
            log.warning("embedding worker %s lost", self.address)
        finally:
            self.pool.embed_route.remove(self.address)
            self.pool.notify_workers_changed()
            await channel.close()
        await asyncio.sleep(self.pool.backoff.initial_s)

    async def _serve(self, engine: Engine, call: grpc.aio.StreamStreamCall, worker_id: str) -> None:
        progress = ProgressWatch(self.pool.stall, warm=bool(worker_id) and worker_id == self.warm_worker_id)
        tasks = [asyncio.create_task(self._send_loop(engine, call, progress)),
                 asyncio.create_task(self._receive_loop(engine, call, progress)),
                 asyncio.create_task(progress.watch(self.address))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            if progress.past_first_steps:
                self.warm_worker_id = worker_id
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()

    async def _send_loop(self, engine: Engine, call: grpc.aio.StreamStreamCall, progress: ProgressWatch) -> None:
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
                await call.write(message)
                continue
            deadline = engine.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time()) + 0.001
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _receive_loop(self, engine: Engine, call: grpc.aio.StreamStreamCall, progress: ProgressWatch) -> None:
        while True:
            pb = await call.read()
            if pb is grpc.aio.EOF:
                raise ConnectionError("the worker closed its Step stream")
            progress.returned()
            engine.process_result(result_from_pb(pb))
            self.pool.flush(engine)
            self.wake.set()


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
        self.connections = {address: WorkerConnection(address, self) for address in addresses}
        self.on_events: Callable[[list[Event]], None] = lambda events: None
        self.on_workers_changed: Callable[[int], None] = lambda num_workers: None
        self._tasks: dict[str, asyncio.Task] = {}  # connection task by worker address
        self.leaving: dict[str, asyncio.Task] = {}  # drain task by address of a worker that left the membership
        self.drain_timeout_s = 30.0  # how long a leaving worker keeps its running requests before they fail

    @property
    def num_workers(self) -> int:
        """Workers connected now: generation workers and embedding-only ones."""
        return len(self.engines.engines) + len(self.embed_route.encoder_infos)

    def start(self) -> None:
        self._tasks = {a: asyncio.create_task(c.run(), name=f"worker {a}") for a, c in self.connections.items()}

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self.leaving.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = {}
        self.leaving = {}

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
                self.connections[address] = connection = WorkerConnection(address, self)
                self._tasks[address] = asyncio.create_task(connection.run(), name=f"worker {address}")
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
        task = self._tasks.pop(address)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # its finally removes the engine and fails the rest
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
        for connection in self.connections.values():
            connection.wake.set()

    def dispatch(self, events: list[Event]) -> None:
        if events:
            self.on_events(events)

    def notify_workers_changed(self) -> None:
        self.on_workers_changed(self.num_workers)
