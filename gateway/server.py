"""Entry point of the gateway stage: `flashstream serve gateway` (gRPC Gateway + OpenAI HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence

from aiohttp import web
from flashstream.v1 import gateway_pb2_grpc

from gateway.auth import ApiKeys
from gateway.cache.breaker import CircuitBreaker
from gateway.cache.lru_store import LruStore, ResultStore
from gateway.cache.redis_store import RedisStore
from gateway.cache.tiered_store import TieredStore
from gateway.cache.router import CachingRouter
from gateway.cache.embedding_cache import EmbeddingCache
from gateway.config import EmbeddingCacheConfig, GatewayConfig, ResultCacheConfig
from gateway.embeddings import EmbeddingService
from gateway.core import GatewayCore
from gateway.grpc_service import SERVICE_NAME, GatewayServicer
from gateway.http_api import HttpApi
from gateway.playground import add_playground_routes
from gateway.tokenizer_client import ConnectionConfig, TokenizerRouter
from services.common.allocator import return_large_buffers_to_os
from services.common.call_auth import CallAuth
from services.common import config as options
from services.common.config import add_options, add_server_args, new_parser, server_config, setup_logging
from services.common.errors import Unavailable
from services.common.grpc_server import CLOSE_GRACE_S, StageServer, start_server
from services.common.internal_tls import load_internal_tls
from services.common.metrics import Metrics
from services.common.discovery import AddressDiscovery
from services.common.stage import run_stage_process, serve_stage
from services.common.tracing import Tracing
from services.port_check import binding

log = logging.getLogger(__name__)

REPLICA_READY_TIMEOUT_S = 60.0  # how long a --reuse-port replica waits for a tokenizer before binding anyway


class GatewayServer:
    """The running gateway: tokenizer connections, the core, the gRPC server and the HTTP server."""

    def __init__(self, config: GatewayConfig, connection: ConnectionConfig | None = None,
                 tracing: Tracing | None = None) -> None:
        self.config = config
        self.metrics = Metrics("gateway")
        connection = dataclasses.replace(connection or ConnectionConfig(), internal_token=config.server.internal_token,
                                         tls=load_internal_tls(config.server.internal_tls_dir))
        self.router = TokenizerRouter(config.tokenizers, connection)
        self.discovery = (AddressDiscovery(self.router, config.tokenizers, config.tokenizer_service,
                                           config.discovery_interval_s) if config.tokenizer_service else None)
        self.cache: CachingRouter | None = None
        rc = config.result_cache
        # One breaker for Redis: the result and embedding caches stop calling a failing Redis together.
        breaker = CircuitBreaker(rc.breaker_failures, rc.breaker_cooldown_s) if rc.redis_url else None
        if rc.enabled:
            self.cache = CachingRouter(self.router, build_store(rc, breaker), self.metrics, rc.namespace)
        self.tracing = tracing or Tracing.otlp("gateway", config.server.otlp_endpoint)
        self.core = GatewayCore(self.cache or self.router, self.metrics, config.request_timeout_s, self.tracing)
        embedding_cache = None
        if config.embedding_cache.enabled:
            embedding_cache = EmbeddingCache(build_embedding_store(config.embedding_cache, rc, breaker), rc.namespace)
        self.embeddings = EmbeddingService(self.core, self.router, embedding_cache, self.metrics)
        self.grpc_port = 0
        self.http_port = 0
        self._stage: StageServer | None = None
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        keys = ApiKeys(self.config.api_keys)
        servicer = GatewayServicer(self.core, keys, self.embeddings)
        self.router.start()
        if self.discovery is not None:
            self.discovery.start()
        if self.config.reuse_port:
            # A replica joins a shared port only once it can serve, so the kernel sends it no connection to refuse.
            await self._wait_ready(REPLICA_READY_TIMEOUT_S)
        self._stage = await start_server(
            self.config.server.address,
            [lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, s)],
            [SERVICE_NAME],
            serving=False,
            reuse_port=self.config.reuse_port,
            auth=None if self.config.open_reflection or not keys.enabled else CallAuth(
                lambda metadata: keys.refusal(metadata.get("authorization")), prefixes=("/grpc.reflection.",)),
        )
        self.grpc_port = self._stage.port
        api = HttpApi(self.core, keys, self.config.max_body_bytes, self.embeddings, self.config.cors_origins,
                      self.config.open_metrics)
        cache = self.cache
        add_playground_routes(api.app, self.core, self.router.watch_engine,
                              None if cache is None else lambda: (cache.num_hits, cache.num_queries))
        # handler_cancellation: a client that disconnects cancels its handler, which aborts the request upstream.
        self._runner = web.AppRunner(api.app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=CLOSE_GRACE_S)  # stop() has drained the requests already
        await self._runner.setup()
        with binding(self.config.server.host, self.config.http_port, "HTTP API"):
            await web.TCPSite(self._runner, self.config.server.host, self.config.http_port,
                              reuse_port=self.config.reuse_port).start()
        self.http_port = self._runner.addresses[0][1]
        self._watcher = asyncio.create_task(self._watch_readiness())
        self.router.changed.set()  # the watcher reads the readiness reached so far

    async def _wait_ready(self, timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.core.is_ready():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                log.warning("no tokenizer ready after %.0f s; joining the shared ports anyway", timeout_s)
                return
            self.router.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.router.changed.wait(), remaining)

    async def _watch_readiness(self) -> None:
        """grpc health follows readiness: SERVING only while a tokenizer stream is open and its model ready."""
        serving = False
        while True:
            await self.router.changed.wait()
            self.router.changed.clear()
            ready = self.core.is_ready()
            if ready != serving and self._stage is not None:
                serving = ready
                await self._stage.set_serving(ready)
                log.info("gateway %s", "ready" if ready else "not ready")

    def ready(self) -> bool:
        return self.core.is_ready()

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING and refuse new work, let in-flight requests finish within grace_s, then stop."""
        self.core.draining = True
        if self.discovery is not None:
            await self.discovery.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._stage is not None:
            await self._stage.set_serving(False)
        if not await self.core.wait_idle(grace_s):
            # The deadline: what still runs ends with a clear error (its handlers send it), not a cut stream.
            self.router.fail_all(Unavailable("the gateway shut down before the request finished; retry it"))
            await self.core.wait_idle(CLOSE_GRACE_S)
        if self._stage is not None:
            await self._stage.server.stop(CLOSE_GRACE_S)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.cache is not None:
            await self.cache.close()
        if self.embeddings.cache is not None:
            await self.embeddings.cache.close()
        await self.router.close()
        self.tracing.shutdown()


def build_store(config: ResultCacheConfig, breaker: CircuitBreaker | None = None) -> ResultStore:
    """An in-process LRU without a Redis URL; else Redis, with local copies of its entries in front while
    config.local_ttl_s > 0 (bounded by max_entries and max_bytes)."""
    if not config.redis_url:
        return LruStore(config.max_entries, config.max_bytes, config.ttl_s)
    breaker = breaker or CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
    shared = RedisStore(config.redis_url, config.ttl_s, config.redis_timeout_s, breaker)
    return _with_local_copies(shared, config.max_entries, config.max_bytes, min(config.local_ttl_s, config.ttl_s))


def build_embedding_store(config: EmbeddingCacheConfig, redis: ResultCacheConfig,
                          breaker: CircuitBreaker | None = None) -> ResultStore:
    """An in-process LRU without a Redis URL; else Redis of the result cache (its timeout, and its breaker when
    given) with this cache's TTL, and local copies in front while config.local_ttl_s > 0 (bounded by this cache's
    max_entries and max_bytes)."""
    if not redis.redis_url:
        return LruStore(config.max_entries, config.max_bytes, config.ttl_s)
    breaker = breaker or CircuitBreaker(redis.breaker_failures, redis.breaker_cooldown_s)
    shared = RedisStore(redis.redis_url, config.ttl_s, redis.redis_timeout_s, breaker)
    return _with_local_copies(shared, config.max_entries, config.max_bytes, min(config.local_ttl_s, config.ttl_s))


def _with_local_copies(shared: RedisStore, max_entries: int, max_bytes: int, local_ttl_s: float) -> ResultStore:
    if local_ttl_s == 0:
        return shared
    return TieredStore(LruStore(max_entries, max_bytes, local_ttl_s), shared)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("flashstream serve gateway", __doc__)
    add_server_args(parser, "gateway", status_port=False)  # status routes live on --http-port
    add_options(parser, GatewayConfig)
    add_options(parser, ResultCacheConfig, "result cache")
    add_options(parser, EmbeddingCacheConfig, "embedding cache")
    return parser


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The GatewayConfig of build_parser()'s parsed flags."""
    return options.config_from_args(
        GatewayConfig, args, server=server_config(args),
        result_cache=options.config_from_args(ResultCacheConfig, args),
        embedding_cache=options.config_from_args(EmbeddingCacheConfig, args))


def build_config(argv: Sequence[str] | None = None) -> GatewayConfig:
    return config_from_args(build_parser().parse_args(argv))


async def serve(config: GatewayConfig) -> int:
    gateway = GatewayServer(config)
    # Status routes are on the HTTP API's port, so no separate status server (port 0).
    return await serve_stage(
        gateway, config.server.host, 0, config.server.drain_timeout_s,
        lambda: f"gateway listening: gRPC {config.server.host}:{gateway.grpc_port}, HTTP "
                f"{config.server.host}:{gateway.http_port}; tokenizers {','.join(config.tokenizers)}")


def main(argv: Sequence[str] | None = None) -> int:
    config = build_config(argv)
    setup_logging(config.server.log_level, "gateway")
    return_large_buffers_to_os()  # request bodies of several MB arrive here
    return run_stage_process(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())
