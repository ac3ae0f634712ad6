"""The tokenizer process's one stream to its scheduler, reconnected with backoff when lost.

Every upstream stream's requests travel on this single Scheduler.Connect stream. Messages go out in
the order `send` is called; each SchedulerDown is handed to `on_down` on the event loop. When the
stream breaks, `on_lost` runs (the servicer fails the requests that were on it) and the link dials
again, fetching the scheduler's Info before it reports itself connected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from flashstream.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

from services.common.errors import Unavailable
from services.common.call_auth import token_metadata
from services.common.config import MAX_RECONNECT_BACKOFF_S
from services.common.grpc_server import create_channel, error_from_rpc, relay_stream
from services.common.internal_tls import InternalTls

log = logging.getLogger(__name__)


class SchedulerLink:
    """Owns the channel, the Connect call and the scheduler's Info."""

    def __init__(
        self,
        target: str,
        on_down: Callable[[scheduler_pb2.SchedulerDown], None],
        on_lost: Callable[[], None],
        on_connected: Callable[[bool], None] | None = None,
        max_backoff_s: float = MAX_RECONNECT_BACKOFF_S,
        internal_token: str = "",
        tls: InternalTls | None = None,
    ) -> None:
        self.target = target
        self._on_down = on_down
        self._on_lost = on_lost
        self.on_connected = on_connected or (lambda _: None)
        self._max_backoff_s = max_backoff_s
        self._metadata = token_metadata(internal_token)  # sent on every call to the scheduler
        self._channel = create_channel(target, tls)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._outbox: asyncio.Queue[scheduler_pb2.SchedulerUp | None] | None = None
        self._task: asyncio.Task | None = None
        self.info: scheduler_pb2.SchedulerInfo | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler-link")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()

    def send(self, message: scheduler_pb2.SchedulerUp) -> None:
        """Queues a message on the open stream; raises Unavailable when there is none."""
        if self._outbox is None or not self.connected.is_set():
            raise Unavailable(f"not connected to the scheduler at {self.target}")
        self._outbox.put_nowait(message)

    async def embed(self, request: common_pb2.EmbedTokensRequest,
                    timeout_s: float | None) -> common_pb2.EmbedTokensResponse:
        """Scheduler.Embed; a failure keeps the scheduler's status code."""
        try:
            return await self._stub.Embed(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"scheduler at {self.target}") from None

    async def watch_engine(self, request: common_pb2.WatchEngineRequest) -> AsyncIterator[common_pb2.EngineState]:
        """Scheduler.WatchEngine; a failure keeps the scheduler's status code."""
        async for state in relay_stream(self._stub.WatchEngine(request, metadata=self._metadata),
                                        f"scheduler at {self.target}"):
            yield state

    async def get_info(self) -> scheduler_pb2.SchedulerInfo:
        # wait_for_ready: the call waits for the channel's next attempt (at most MAX_RECONNECT_BACKOFF_S away)
        # instead of failing at once and adding this loop's own backoff to it.
        self.info = await self._stub.Info(scheduler_pb2.SchedulerInfoRequest(), timeout=10, wait_for_ready=True,
                                          metadata=self._metadata)
        return self.info

    async def _outgoing(self, outbox: asyncio.Queue) -> AsyncIterator[scheduler_pb2.SchedulerUp]:
        while (message := await outbox.get()) is not None:
            yield message

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self.get_info()
                outbox: asyncio.Queue = asyncio.Queue()
                call = self._stub.Connect(self._outgoing(outbox), metadata=self._metadata)
                self._outbox = outbox
                self.connected.set()
                self.on_connected(True)
                log.info("scheduler stream open to %s (model %s)", self.target, self.info.model_id)
                backoff = 0.05
                async for down in call:
                    self._on_down(down)
                log.warning("scheduler at %s closed the stream", self.target)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("scheduler at %s unavailable: %s", self.target, exc.code().name)
            except Exception:  # noqa: BLE001 - a bug in handling one message must not end the link for good
                log.exception("scheduler stream to %s failed", self.target)
            finally:
                if self._outbox is not None:
                    self._outbox.put_nowait(None)
                was_connected = self.connected.is_set()
                self.connected.clear()
                self._outbox = None
                if was_connected:
                    self.on_connected(False)
                    self._on_lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
