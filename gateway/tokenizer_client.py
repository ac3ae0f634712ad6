"""The gateway's side of the Tokenizer hop: one long-lived Connect stream per tokenizer address.

Every public request of a connection rides that one stream (a StreamLink). New requests and aborts collect in
a pending batch and the link's writer sends them as a single TokenizerUp: whatever accumulated while the
previous write was in flight, so at most one message per event-loop turn. Incoming TextEvents go to per-request
queues by request id; ids the connection no longer knows (aborted, ended) are dropped. When the stream breaks,
its requests end with UNAVAILABLE (StreamLost) and the link opens a new one after its backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from flashstream.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc

from gateway.pb_convert import card_from_info, event_from_pb, text_request_to_pb
from gateway.schema import Event, Finished, ModelCard, Submission
from services.common.call_auth import token_metadata
from services.common.config import MAX_RECONNECT_BACKOFF_S, BackoffConfig
from services.common.errors import FlashStreamError, Unavailable
from services.common.grpc_server import error_from_rpc, relay_stream
from services.common.internal_tls import InternalTls
from services.common.stream_link import StreamLink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionConfig:
    """Timing of a tokenizer connection."""

    info_timeout_s: float = 5.0
    info_interval_s: float = 1.0  # how often Info is re-read (the tokenizer's readiness can change)
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = MAX_RECONNECT_BACKOFF_S
    internal_token: str = field(default="", repr=False)  # the stack's internal token, sent on every call
    tls: InternalTls | None = field(default=None, repr=False)  # mutual TLS to the tokenizers; None: plaintext

    def __post_init__(self) -> None:
        self.backoff()  # checks the reconnect delays
        if self.info_interval_s <= 0 or self.info_timeout_s <= 0:
            raise ValueError("info_interval_s and info_timeout_s must be positive")

    def backoff(self) -> BackoffConfig:
        return BackoffConfig(self.reconnect_min_s, self.reconnect_max_s)


class TokenizerRequest:
    """A request on a connection: its events (the link puts them, the request's one reader takes them, or its
    listener receives them as they arrive) and abort. Every streamed token passes here, so the events wait in a
    deque with at most one waiter, without an asyncio.Queue's bookkeeping (its count of unfinished items, an Event
    cleared on every put)."""

    __slots__ = ("request_id", "_items", "_waiter", "_listener", "_conn")

    def __init__(self, request_id: str, conn: TokenizerLink) -> None:
        self.request_id = request_id
        self._items: deque[Event | FlashStreamError] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the reader's, while it waits for an event
        self._listener: Callable[[Event | FlashStreamError], None] | None = None
        self._conn = conn

    async def next(self) -> Event | FlashStreamError:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    @property
    def replayed(self) -> bool:
        return False

    def next_nowait(self) -> Event | FlashStreamError | None:
        return self._items.popleft() if self._items else None

    def abort(self) -> None:
        self._conn.abort(self.request_id)

    def listen(self, listener: Callable[[Event | FlashStreamError], None]) -> None:
        """From now on each event goes to `listener` as the link receives it (those received already first),
        instead of waiting to be read: a reader that only collects them wakes no task per event. `listener` must
        not raise, since it runs inside the link's handling of a message shared by many requests."""
        while self._items:
            listener(self._items.popleft())
        self._listener = listener

    def put(self, item: Event | FlashStreamError) -> None:
        if self._listener is not None:
            self._listener(item)
            return
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class TokenizerLink(StreamLink[tokenizer_pb2.TokenizerUp, tokenizer_pb2.TokenizerDown]):
    """One tokenizer replica: its Info (model card, readiness) and its multiplexed Connect stream."""

    def __init__(self, address: str, on_change: Callable[[], None], config: ConnectionConfig) -> None:
        super().__init__("tokenizer", address, config.backoff(), config.tls)
        self.card: ModelCard | None = None
        self.info_ready = False
        self._on_change = on_change
        self._config = config
        self._metadata = token_metadata(config.internal_token)
        self._active: dict[str, TokenizerRequest] = {}
        self._pending_new: dict[str, tokenizer_pb2.TextRequest] = {}
        self._pending_aborts: list[str] = []
        self._wakeup = asyncio.Event()
        self.num_unary = 0  # unary calls (embeddings) in flight, for load balancing

    @property
    def ready(self) -> bool:
        return self.connected.is_set() and self.info_ready

    @property
    def num_active(self) -> int:
        return len(self._active) + self.num_unary

    async def call(self, method: str, request: Any, timeout_s: float | None) -> Any:
        """A unary call on this tokenizer (e.g. "EncodeInputs", "Embed"); a failure keeps its status code."""
        stub = self._stub()
        self.num_unary += 1
        try:
            return await getattr(stub, method)(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"tokenizer {self.address}") from None
        finally:
            self.num_unary -= 1

    async def watch_engine(self, interval_s: float) -> AsyncIterator[common_pb2.EngineState]:
        """The scheduler state behind this tokenizer every interval (see TokenizerRouter.watch_engine)."""
        call = self._stub().WatchEngine(common_pb2.WatchEngineRequest(interval_s=interval_s),
                                        metadata=self._metadata)
        async for state in relay_stream(call, f"tokenizer {self.address}"):
            yield state

    def _stub(self) -> tokenizer_pb2_grpc.TokenizerStub:
        """A stub on the open stream's channel, for unary calls."""
        return tokenizer_pb2_grpc.TokenizerStub(self.open_channel())

    def forward(self, submission: Submission) -> TokenizerRequest:
        if not self.connected.is_set():
            raise self.not_connected()
        handle = TokenizerRequest(submission.request_id, self)
        self._active[submission.request_id] = handle
        self._pending_new[submission.request_id] = text_request_to_pb(submission)
        self._wakeup.set()
        return handle

    def abort(self, request_id: str) -> None:
        if self._active.pop(request_id, None) is None:
            return
        if self._pending_new.pop(request_id, None) is None:  # already sent: tell the tokenizer
            self._pending_aborts.append(request_id)
            self._wakeup.set()

    def fail_all(self, exc: FlashStreamError) -> None:
        """Ends every request on this connection with exc, aborting those the tokenizer has at the next write."""
        active, self._active = self._active, {}
        for request_id, handle in active.items():
            if self._pending_new.pop(request_id, None) is None:
                self._pending_aborts.append(request_id)
            handle.put(exc)
        self._wakeup.set()

    # ---- the stream ----

    async def open_stream(self, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
        stub = tokenizer_pb2_grpc.TokenizerStub(channel)
        await self._read_info(stub)
        call = stub.Connect(metadata=self._metadata)
        await call.wait_for_connection()
        return call

    def on_open(self) -> None:
        self._on_change()
        log.info("tokenizer %s serves model %s", self.address, self.card and self.card.id)

    def on_message(self, message: tokenizer_pb2.TokenizerDown) -> None:
        for ev in message.events:
            handle = self._active.get(ev.request_id)
            if handle is None:
                continue
            item = event_from_pb(ev)
            if isinstance(item, (Finished, FlashStreamError)):
                del self._active[ev.request_id]
            handle.put(item)

    async def next_message(self) -> tokenizer_pb2.TokenizerUp:
        """Every request and abort since the last write, as one message."""
        while not self._pending_new and not self._pending_aborts:
            await self._wakeup.wait()
            self._wakeup.clear()
        up = tokenizer_pb2.TokenizerUp(requests=list(self._pending_new.values()),
                                       abort_request_ids=self._pending_aborts)
        self._pending_new = {}
        self._pending_aborts = []
        return up

    async def watch(self) -> None:
        """Reads Info again every info_interval_s: the tokenizer's readiness can change."""
        stub = self._stub()
        while True:
            await asyncio.sleep(self._config.info_interval_s)
            try:
                await self._read_info(stub)
            except grpc.aio.AioRpcError as exc:
                log.warning("tokenizer %s Info failed: %s", self.address, exc.code().name)
                if self.info_ready:
                    self.info_ready = False
                    self._on_change()

    def on_lost(self, error: FlashStreamError) -> None:
        active, self._active = self._active, {}
        self._pending_new = {}
        self._pending_aborts = []
        for handle in active.values():
            handle.put(error)
        self._on_change()

    async def _read_info(self, stub: tokenizer_pb2_grpc.TokenizerStub) -> None:
        info = await stub.Info(tokenizer_pb2.TokenizerInfoRequest(), timeout=self._config.info_timeout_s,
                               metadata=self._metadata)
        card = card_from_info(info)
        if card != self.card or info.ready != self.info_ready:
            self.card, self.info_ready = card, info.ready
            self._on_change()


class TokenizerRouter:
    """Every tokenizer connection; routes a request to the least-loaded ready replica of its model."""

    def __init__(self, addresses: Sequence[str], config: ConnectionConfig | None = None) -> None:
        self.changed = asyncio.Event()  # set whenever a connection's readiness or model card changes
        self._config = config or ConnectionConfig()
        self.connections = [TokenizerLink(a, self.changed.set, self._config) for a in addresses]
        self._turn = itertools.count()
        self.leaving: dict[str, asyncio.Task[None]] = {}  # drain task by address of a tokenizer that left
        self.drain_timeout_s = 30.0  # how long a tokenizer that left keeps its running requests

    @property
    def ready(self) -> bool:
        return any(conn.ready for conn in self.connections)

    def cards(self) -> list[ModelCard]:
        cards: dict[str, ModelCard] = {}
        for conn in self.connections:
            if conn.card is not None:
                cards.setdefault(conn.card.id, conn.card)
        return list(cards.values())

    def forward(self, submission: Submission) -> TokenizerRequest:
        return self.pick(submission.request.model).forward(submission)

    def pick(self, model: str) -> TokenizerLink:
        """The least-loaded ready replica of `model`; the rotating start breaks ties round-robin."""
        candidates = [c for c in self.connections if c.ready and c.card is not None and c.card.id == model
                      and c.address not in self.leaving]
        if not candidates:
            raise Unavailable(f"no tokenizer for model '{model}' is ready; retry shortly")
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda c: c.num_active)

    async def watch_engine(self, model: str, interval_s: float) -> AsyncIterator[common_pb2.EngineState]:
        """The scheduler state of `model`'s pool every interval, through one of its tokenizers, until the
        caller stops iterating; a lost tokenizer ends it with its status (UNAVAILABLE)."""
        async for state in self.pick(model).watch_engine(interval_s):
            yield state

    def start(self) -> None:
        for conn in self.connections:
            conn.start()

    def fail_all(self, exc: FlashStreamError) -> None:
        """Ends every running request with exc (a drain that reached its deadline)."""
        for conn in self.connections:
            conn.fail_all(exc)
    def set_addresses(self, addresses: Sequence[str]) -> None:
        """The tokenizers from now on: a new address is connected at once; one no longer listed takes no new
        request, and its stream closes once its requests have ended (or after drain_timeout_s, failing them with
        UNAVAILABLE)."""
        wanted = list(dict.fromkeys(addresses))
        known = {conn.address for conn in self.connections}
        for address in wanted:
            if address in self.leaving:
                self.leaving.pop(address).cancel()
            elif address not in known:
                conn = TokenizerLink(address, self.changed.set, self._config)
                self.connections.append(conn)
                conn.start()
                log.info("tokenizer %s joins", address)
        for conn in self.connections:
            if conn.address not in wanted and conn.address not in self.leaving:
                self.leaving[conn.address] = asyncio.create_task(self._leave(conn), name=f"{conn.address} leaving")
                log.info("tokenizer %s leaves once its requests end", conn.address)
        self.changed.set()

    async def _leave(self, conn: TokenizerLink) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while conn.num_active and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.connections.remove(conn)
        self.leaving.pop(conn.address, None)
        await conn.close()  # requests still open end with UNAVAILABLE
        self.changed.set()
        log.info("tokenizer %s left", conn.address)

    async def close(self) -> None:
        for task in self.leaving.values():
            task.cancel()
        await asyncio.gather(*self.leaving.values(), return_exceptions=True)
        self.leaving = {}
        await asyncio.gather(*(conn.close() for conn in self.connections))
