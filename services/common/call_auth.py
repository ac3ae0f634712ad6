"""Who may call a gRPC server: every call is checked by an interceptor before its handler runs.

Internal stages (tokenizer, scheduler, worker) share one secret, the internal token (`--internal-token` or
FLASHSTREAM_INTERNAL_TOKEN; `flashstream up` makes a fresh one per run): every internal call carries it as
`x-flashstream-token` metadata and a server refuses a call without it, compared in constant time. Whoever reaches
an internal port without the token cannot bypass the gateway's API keys. The gateway checks API keys on its own
methods and, through the same interceptor, on reflection.

gRPC health stays open (it tells only SERVING or not): probes and `flashstream up` read it without secrets.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

TOKEN_METADATA_KEY = "x-flashstream-token"
OPEN_SERVICES = ("/grpc.health.v1.Health/",)

# metadata of a call → the reason to refuse it, or None to let it through
CallCheck = Callable[[dict[str, str]], str | None]


def token_check(token: str) -> CallCheck:
    """Accepts calls that carry `token` as x-flashstream-token."""
    expected = token.encode()

    def check(metadata: dict[str, str]) -> str | None:
        given = metadata.get(TOKEN_METADATA_KEY, "").encode()
        if hmac.compare_digest(given, expected):
            return None
        return "this internal service needs the stack's internal token (x-flashstream-token metadata)"

    return check


def internal_auth(token: str) -> CallAuth | None:
    """The interceptor of an internal stage's server: the token on every call; None without a token."""
    return CallAuth(token_check(token)) if token else None


def token_metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    """The metadata an internal call sends (None without a token)."""
    return ((TOKEN_METADATA_KEY, token),) if token else None


def _refusal(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED without reading the request."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


class CallAuth(grpc.aio.ServerInterceptor):
    """Runs `check` on every call to a method under one of `prefixes` ("/": all) except gRPC health."""

    def __init__(self, check: CallCheck, prefixes: tuple[str, ...] = ("/",)) -> None:
        self._check = check
        self._prefixes = prefixes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES) or not method.startswith(self._prefixes):
            return handler
        reason = self._check(dict(handler_call_details.invocation_metadata or ()))
        return handler if reason is None else _refusal(handler, reason)
