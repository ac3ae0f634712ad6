"""gRPC plumbing every stage shares: server start with health and reflection, error mapping, drain on SIGTERM.

Handlers raise `FlashStreamError`s; `handle_errors` turns them into gRPC statuses so servicers stay thin.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.call_auth import CallAuth
from services.common.config import MAX_RECONNECT_BACKOFF_S
from services.common.decode_errors import DecodeErrorsAreInvalidArgument
from services.common.errors import ErrorCode, FlashStreamError
from services.common.internal_tls import TLS_CHANNEL_OPTIONS, InternalTls
from services.port_check import binding

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CLOSE_GRACE_S = 0.5  # what calls still open after a stage's own drain get before the server cancels them

# Long-lived internal streams: keepalives detect a dead peer within ~30 s even when no step is running.
GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    # gRPC's own reconnect backoff grows to 120 s by default: a stage back after a long outage went unseen.
    ("grpc.max_reconnect_backoff_ms", int(MAX_RECONNECT_BACKOFF_S * 1000)),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]

# Calls that have reached a server but that its event loop has not taken up yet. Past gRPC core's default limit
# of 1,000 (a busy gateway with a few thousand streams in flight reaches it), core cancels arriving calls at random
# and their clients see a bare CANCELLED: requests lost without a reason. A waiting call costs a few KB and has a
# deadline, so calls wait instead.
SERVER_OPTIONS: list[tuple[str, Any]] = [("grpc.server.max_pending_requests", 65_536)]


def grpc_status(code: ErrorCode | int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number (UNKNOWN for numbers gRPC does not define)."""
    for status in grpc.StatusCode:
        if status.value[0] == int(code):
            return status
    return grpc.StatusCode.UNKNOWN


def error_from_rpc(exc: grpc.aio.AioRpcError, hop: str) -> FlashStreamError:
    """A failed call to the next stage as an error of this one: the same code, the next stage's message (a
    lost connection stays UNAVAILABLE, so callers can retry it)."""
    try:
        code = ErrorCode(exc.code().value[0])
    except ValueError:
        code = ErrorCode.UNKNOWN
    if code in (ErrorCode.UNKNOWN, ErrorCode.INTERNAL):
        return FlashStreamError(f"{hop} failed: {exc.details()}", ErrorCode.INTERNAL)
    return FlashStreamError(exc.details() or f"{hop} failed ({code.name})", code)


async def relay_stream(call: grpc.aio.UnaryStreamCall, hop: str) -> AsyncIterator[Any]:
    """The messages of a server-streaming call to the next stage; a failure becomes that stage's error (see
    error_from_rpc), and the call is cancelled when the caller stops early."""
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc, hop) from None
    finally:
        call.cancel()


def handle_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a grpc.aio handler (coroutine or async generator) so that exceptions become statuses.

    A FlashStreamError keeps its code and message; anything else is logged and reported as INTERNAL
    without leaking internals to the client.
    """

    async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        if isinstance(exc, FlashStreamError):
            await context.abort(grpc_status(exc.code), exc.message)
        log.exception("unexpected error in %s", handler.__qualname__)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in handler(self, request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - turned into a status
                await _abort(context, exc)

        return stream_wrapper

    @functools.wraps(handler)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - turned into a status
            await _abort(context, exc)

    return unary_wrapper


@dataclass
class StageServer:
    """A started grpc.aio server with its health servicer."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: tuple[str, ...]

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def drain_and_stop(self, grace_s: float, drain: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Reports NOT_SERVING, lets in-flight calls finish within grace_s, then stops.

        drain(grace_s), when given, is the stage's own drain: it ends the long-lived streams it serves by the
        deadline, which would otherwise hold the server's whole grace period; what is left then gets
        CLOSE_GRACE_S."""
        await self.set_serving(False)
        if drain is None:
            await self.server.stop(grace_s)
            return
        await drain(grace_s)
        await self.server.stop(CLOSE_GRACE_S)


async def start_server(
    address: str,
    register: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    serving: bool = True,
    reuse_port: bool = False,
    auth: CallAuth | None = None,
    tls: InternalTls | None = None,
) -> StageServer:
    """Starts a grpc.aio server on address ("host:port", port 0 picks a free one).

    register: callables that add servicers (e.g. `lambda s: add_XServicer_to_server(obj, s)`).
    service_names: full names of those services, for health and reflection.
    reuse_port: share the port with other processes that also ask for it (SO_REUSEPORT: the kernel spreads new
    connections among them); otherwise a taken port is an error.
    auth: who may call (services.common.call_auth); None lets every caller in.
    tls: serve mutual TLS with these certificates (services.common.internal_tls); None serves plaintext.
    """
    options = [(k, int(reuse_port) if k == "grpc.so_reuseport" else v) for k, v in GRPC_OPTIONS] + SERVER_OPTIONS
    interceptors = [*([auth] if auth is not None else []), DecodeErrorsAreInvalidArgument()]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    host, _, wanted = address.rpartition(":")
    with binding(host.strip("[]"), int(wanted), "gRPC"):
        port = server.add_insecure_port(address) if tls is None else server.add_secure_port(
            address, tls.server_credentials())
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    await server.start()
    stage = StageServer(server, health_servicer, port, tuple(service_names))
    await stage.set_serving(serving)
    return stage


def create_channel(target: str, tls: InternalTls | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to another stage with the shared options: mutual TLS with tls's certificates, plaintext
    without."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=[*GRPC_OPTIONS, *TLS_CHANNEL_OPTIONS])


def install_stop_signals(stop: asyncio.Event) -> None:
    """Sets `stop` on SIGTERM or SIGINT (the stage's main loop then drains and exits 0)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
