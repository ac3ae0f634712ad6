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
from services.common.config import add_server_args, env_default, server_config, setup_logging, split_csv, new_parser
from services.common.errors import Unavailable
from services.common.grpc_server import CLOSE_GRACE_S, StageServer, start_server
from services.common.internal_tls import load_internal_tls
from services.common.metrics import Metrics
from services.common.discovery import AddressDiscovery, add_discovery_args
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
    if config.local_ttl_s == 0:
        return shared
    return TieredStore(LruStore(config.max_entries, config.max_bytes, min(config.local_ttl_s, config.ttl_s)), shared)


def build_embedding_store(config: EmbeddingCacheConfig, redis: ResultCacheConfig,
                          breaker: CircuitBreaker | None = None) -> ResultStore:
    """Redis of the result cache (its timeout, and its breaker when given) with this cache's TTL, else an LRU."""
    if redis.redis_url:
        breaker = breaker or CircuitBreaker(redis.breaker_failures, redis.breaker_cooldown_s)
        return RedisStore(redis.redis_url, config.ttl_s, redis.redis_timeout_s, breaker)
    return LruStore(config.max_entries, config.max_bytes, config.ttl_s)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("flashstream serve gateway", __doc__)
    add_server_args(parser, "gateway", status_port=False)  # status routes live on --http-port
    parser.add_argument("--tokenizers", default=env_default("tokenizers", "127.0.0.1:50051"),
                        help="tokenizer addresses host:port[,host:port...]")
    parser.add_argument("--http-port", type=int, default=env_default("gateway_http_port", 8000),
                        help="OpenAI-compatible HTTP API plus /metrics, /health, /ready")
    parser.add_argument("--api-keys", default=env_default("api_keys", ""),
                        help="comma-separated API keys; empty: no authentication")
    parser.add_argument("--open-metrics", action="store_true", default=env_default("open_metrics", False),
                        help="serve /metrics without an API key when keys are on (a scraper inside the network)")
    parser.add_argument("--open-reflection", action="store_true", default=env_default("open_reflection", False),
                        help="serve gRPC reflection without an API key when keys are on")
    parser.add_argument("--request-timeout-s", type=float, default=env_default("request_timeout_s", 600.0),
                        help="deadline of a request that sets none")
    parser.add_argument("--reuse-port", action="store_true", default=env_default("reuse_port", False),
                        help="share the gRPC and HTTP ports with other gateway replicas on this host (SO_REUSEPORT); "
                             "the replica binds once a tokenizer is ready")
    parser.add_argument("--max-body-bytes", type=int, default=env_default("max_body_bytes", 4 * 1024 * 1024),
                        help="largest accepted HTTP request body")
    add_discovery_args(parser, "tokenizer-service", "tokenizers")
    parser.add_argument("--cors-origins", default=env_default("cors_origins", ""),
                        help="comma-separated browser origins allowed to call the HTTP API (CORS), e.g. "
                             "'http://localhost:3000'; '*' allows any; empty: no CORS headers")
    cache = parser.add_argument_group("result cache")
    cache.add_argument("--result-cache", choices=("on", "off"), default=env_default("result_cache", "on"),
                       help="answer repeated greedy or seeded requests from the cache and coalesce identical ones")
    cache.add_argument("--redis-url", default=env_default("redis_url", ""),
                       help="Redis for the result cache (redis://host:port/db); empty: an in-process LRU")
    cache.add_argument("--result-cache-ttl-s", type=float, default=env_default("result_cache_ttl_s", 3600.0),
                       help="how long a stored answer lives")
    cache.add_argument("--redis-timeout-s", type=float, default=env_default("redis_timeout_s", 0.05),
                       help="limit of every Redis call; a slower call is a miss")
    cache.add_argument("--redis-breaker-failures", type=int, default=env_default("redis_breaker_failures", 5),
                       help="consecutive Redis failures after which Redis is bypassed")
    cache.add_argument("--redis-breaker-cooldown-s", type=float,
                       default=env_default("redis_breaker_cooldown_s", 10.0),
                       help="how long Redis is bypassed before it is tried again")
    cache.add_argument("--result-cache-max-entries", type=int,
                       default=env_default("result_cache_max_entries", 10_000), help="in-process LRU: entries")
    cache.add_argument("--result-cache-max-bytes", type=int,
                       default=env_default("result_cache_max_bytes", 256 * 1024 * 1024),
                       help="in-process LRU: bytes of stored answers")
    emb = parser.add_argument_group("embedding cache")
    emb.add_argument("--embedding-cache", choices=("on", "off"), default=env_default("embedding_cache", "on"),
                     help="answer embedding inputs seen before from the cache (Redis with --redis-url)")
    emb.add_argument("--embedding-cache-ttl-s", type=float, default=env_default("embedding_cache_ttl_s", 86400.0),
                     help="how long a stored vector lives")
    emb.add_argument("--embedding-cache-max-entries", type=int,
                     default=env_default("embedding_cache_max_entries", 100_000), help="in-process LRU: vectors")
    emb.add_argument("--embedding-cache-max-bytes", type=int,
                     default=env_default("embedding_cache_max_bytes", 256 * 1024 * 1024),
                     help="in-process LRU: bytes of stored vectors")
    return parser


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig(
        tokenizers=tuple(split_csv(args.tokenizers)),
        tokenizer_service=args.tokenizer_service,
        discovery_interval_s=args.discovery_interval_s,
        server=server_config(args),
        http_port=args.http_port,
        api_keys=tuple(split_csv(args.api_keys)),
        request_timeout_s=args.request_timeout_s,
        max_body_bytes=args.max_body_bytes,
        cors_origins=tuple(split_csv(args.cors_origins)),
        reuse_port=args.reuse_port,
        open_metrics=args.open_metrics,
        open_reflection=args.open_reflection,
        result_cache=ResultCacheConfig(
            enabled=args.result_cache == "on",
            redis_url=args.redis_url,
            ttl_s=args.result_cache_ttl_s,
            redis_timeout_s=args.redis_timeout_s,
            breaker_failures=args.redis_breaker_failures,
            breaker_cooldown_s=args.redis_breaker_cooldown_s,
            max_entries=args.result_cache_max_entries,
            max_bytes=args.result_cache_max_bytes,
        ),
        embedding_cache=EmbeddingCacheConfig(
            enabled=args.embedding_cache == "on",
            ttl_s=args.embedding_cache_ttl_s,
            max_entries=args.embedding_cache_max_entries,
            max_bytes=args.embedding_cache_max_bytes,
        ),
    )


async def serve(config: GatewayConfig) -> int:
    gateway = GatewayServer(config)
    # Status routes are on the HTTP API's port, so no separate status server (port 0).
    return await serve_stage(
        gateway, config.server.host, 0, config.server.drain_timeout_s,
        lambda: f"gateway listening: gRPC {config.server.host}:{gateway.grpc_port}, HTTP "
                f"{config.server.host}:{gateway.http_port}; tokenizers {','.join(config.tokenizers)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    setup_logging(config.server.log_level, "gateway")
    return_large_buffers_to_os()  # request bodies of several MB arrive here
    return run_stage_process(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())
