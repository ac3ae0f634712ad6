"""The tokenizer process's one stream to its scheduler (a StreamLink).

Every upstream stream's requests travel on this single Scheduler.Connect stream. Messages go out in the order
`send` is called; each SchedulerDown is handed to `on_down` on the event loop. The link reads the scheduler's Info
before it reports itself connected; when the stream breaks, `on_lost` gets the error the requests that were on it
end with (the servicer fails them), and the link opens a new stream after its backoff.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from flashstream.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

from services.common.call_auth import token_metadata
from services.common.config import BackoffConfig
from services.common.errors import FlashStreamError
from services.common.grpc_server import error_from_rpc, relay_stream
from services.common.internal_tls import InternalTls
from services.common.stream_link import StreamLink

INFO_TIMEOUT_S = 10.0
SCHEDULER_BACKOFF = BackoffConfig(initial_s=0.05)


class SchedulerLink(StreamLink[scheduler_pb2.SchedulerUp, scheduler_pb2.SchedulerDown]):
    """The Connect stream and the scheduler's Info."""

    def __init__(
        self,
        target: str,
        on_down: Callable[[scheduler_pb2.SchedulerDown], None],
        on_lost: Callable[[FlashStreamError], None],
        on_connected: Callable[[bool], None] | None = None,
        backoff: BackoffConfig = SCHEDULER_BACKOFF,
        internal_token: str = "",
        tls: InternalTls | None = None,
    ) -> None:
        super().__init__("scheduler", target, backoff, tls)
        self._on_down = on_down
        self._on_lost = on_lost
        self.on_connected = on_connected or (lambda _: None)
        self._metadata = token_metadata(internal_token)  # sent on every call to the scheduler
        self.info: scheduler_pb2.SchedulerInfo | None = None

    async def embed(self, request: common_pb2.EmbedTokensRequest,
                    timeout_s: float | None) -> common_pb2.EmbedTokensResponse:
        """Scheduler.Embed; a failure keeps the scheduler's status code."""
        try:
            return await self._stub().Embed(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"scheduler at {self.address}") from None

    async def watch_engine(self, request: common_pb2.WatchEngineRequest) -> AsyncIterator[common_pb2.EngineState]:
        """Scheduler.WatchEngine; a failure keeps the scheduler's status code."""
        async for state in relay_stream(self._stub().WatchEngine(request, metadata=self._metadata),
                                        f"scheduler at {self.address}"):
            yield state

    def _stub(self) -> scheduler_pb2_grpc.SchedulerStub:
        return scheduler_pb2_grpc.SchedulerStub(self.open_channel())

    # ---- the stream ----

    async def open_stream(self, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        # wait_for_ready: the call waits for the channel's next attempt (at most MAX_RECONNECT_BACKOFF_S away)
        # instead of failing at once and adding the link's own backoff to it.
        self.info = await stub.Info(scheduler_pb2.SchedulerInfoRequest(), timeout=INFO_TIMEOUT_S,
                                    wait_for_ready=True, metadata=self._metadata)
        return stub.Connect(metadata=self._metadata)

    def on_open(self) -> None:
        self.on_connected(True)

    def on_message(self, message: scheduler_pb2.SchedulerDown) -> None:
        self._on_down(message)

    def on_lost(self, error: FlashStreamError) -> None:
        self.on_connected(False)
        self._on_lost(error)
