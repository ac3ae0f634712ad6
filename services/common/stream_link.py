"""One long-lived bidirectional gRPC stream to the next stage, carrying many requests, opened again with capped
exponential backoff when it is lost.

Each internal hop is a StreamLink subclass: the gateway's TokenizerLink, the tokenizer's SchedulerLink and the
scheduler's WorkerLink. The link owns the channel (a fresh one per attempt), the call, the writer (by default
draining the send queue), the reader that hands each reply to `on_message`, readiness, the reconnect loop and
close. A hop says only what differs: how it opens its stream (reading the peer's Info first), what a reply means
to its requests, what else watches the stream while it is open, and how its requests end when it is lost.

`on_open` and `on_lost` come in pairs: once `open_stream` has returned, `on_lost` runs exactly once when that
stream ends for any reason (the peer closed it, a failure, a stalled peer, close()), with a typed error that
says why, and the hop fails every request it had on that stream with it.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

import grpc

from services.common.config import BackoffConfig
from services.common.errors import FlashStreamError, Unavailable
from services.common.grpc_server import create_channel
from services.common.internal_tls import InternalTls

log = logging.getLogger(__name__)

Up = TypeVar("Up")  # what this side writes on the stream
Down = TypeVar("Down")  # what the peer writes back


class StreamLost(Unavailable):
    """The stream a request travelled on broke before the request ended; a retry may succeed."""


class StreamLink(ABC, Generic[Up, Down]):
    """One stream to the peer at `address`, kept open until close()."""

    def __init__(self, kind: str, address: str, backoff: BackoffConfig, tls: InternalTls | None = None) -> None:
        self.kind = kind  # what the peer is ("tokenizer", "scheduler", "worker"), for messages
        self.address = address
        self.backoff = backoff
        self.tls = tls  # mutual TLS to the peer; None: plaintext
        self.connected = asyncio.Event()  # set while a stream is open
        self.channel: grpc.aio.Channel | None = None  # the open stream's channel, for unary calls beside it
        self._outbox: asyncio.Queue[Up] | None = None  # messages for the open stream, in order
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # ---- what a hop says ----

    @abstractmethod
    async def open_stream(self, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall | None:
        """Prepares for a stream on a fresh channel (e.g. reads the peer's Info) and opens the call; None: the
        peer serves no stream, and the channel alone is held until it fails. Raising means: try again later."""

    def on_open(self) -> None:
        """The stream is open (connected is set, send works)."""

    @abstractmethod
    def on_message(self, message: Down) -> None:
        """One message from the peer; raising ends the stream."""

    async def next_message(self) -> Up:
        """What the writer sends next, once the previous write is done: by default the next message of `send`."""
        if self._outbox is None:
            raise self.not_connected()
        return await self._outbox.get()

    async def watch(self) -> None:
        """Runs beside the reader and the writer while the stream is open (polling Info, noticing a stalled
        peer); returning or raising ends the stream, and a FlashStreamError raised here is what it is lost with."""
        await asyncio.Event().wait()

    def lost_error(self, reason: str) -> FlashStreamError:
        """The error a lost stream's requests end with."""
        return StreamLost(f"lost the {self.kind} stream to {self.address} ({reason}); retry the request")

    @abstractmethod
    def on_lost(self, error: FlashStreamError) -> None:
        """The stream opened by the last open_stream ended: every request on it ends with `error`."""

    # ---- the link ----

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.kind} {self.address}")

    async def close(self) -> None:
        """Ends the stream (its requests get on_lost's error) and the reconnect loop; returns once both are done."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def send(self, message: Up) -> None:
        """Queues a message on the open stream; raises Unavailable when there is none."""
        if self._outbox is None:
            raise self.not_connected()
        self._outbox.put_nowait(message)

    def open_channel(self) -> grpc.aio.Channel:
        """The open stream's channel, for unary calls beside it; raises Unavailable when no stream is open."""
        if self.channel is None:
            raise self.not_connected()
        return self.channel

    def not_connected(self) -> Unavailable:
        """The error of a call that needs an open stream when there is none."""
        return Unavailable(f"not connected to the {self.kind} at {self.address}")

    async def _run(self) -> None:
        delay = self.backoff.initial_s
        num_failures = 0  # attempts in a row that opened no stream
        while not self._closed:
            channel = create_channel(self.address, self.tls)
            opened = False
            reason = "closed"
            error: FlashStreamError | None = None
            try:
                call = await self.open_stream(channel)
                opened = True
                self.channel, self._outbox = channel, asyncio.Queue()
                self.connected.set()
                self.on_open()
                delay, num_failures = self.backoff.initial_s, 0
                log.info("%s stream to %s open", self.kind, self.address)
                reason = await (self._hold(channel) if call is None else self._serve(call))
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except FlashStreamError as exc:
                reason, error = exc.message, exc
            except Exception as exc:  # noqa: BLE001 - a failure of one stream only means: open another
                log.exception("%s stream to %s failed", self.kind, self.address)
                reason = repr(exc)
            finally:
                self.connected.clear()
                self.channel, self._outbox = None, None
                if opened:
                    self.on_lost(error or self.lost_error(reason))
                await channel.close()
            if self._closed:
                return
            num_failures += not opened
            # A peer that is not up yet is reported once, not on every attempt.
            level = logging.WARNING if num_failures <= 1 else logging.DEBUG
            log.log(level, "%s stream to %s: %s; opening again in %.2f s", self.kind, self.address, reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff.max_s)

    async def _serve(self, call: grpc.aio.StreamStreamCall) -> str:
        """Reads, writes and watches until one of them ends; returns why (or raises what ended it)."""
        reader = asyncio.create_task(self._read(call))
        tasks = [reader, asyncio.create_task(self._write(call)), asyncio.create_task(self.watch())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if (exc := task.exception()) is not None:
                    raise exc
            return "closed by the peer" if reader in done else "closed"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while (message := await call.read()) is not grpc.aio.EOF:
            self.on_message(message)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            await call.write(await self.next_message())

    async def _hold(self, channel: grpc.aio.Channel) -> str:
        """A peer without a stream is there until its channel fails."""
        state = channel.get_state(try_to_connect=True)
        while state not in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
        return f"channel {state.name.lower()}"
