"""The gateway's configuration, built once in main() from flags and FLASHSTREAM_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import (ServerConfig, check_host_port, csv_option, flag_of, on_off_option, option,
                                    service_option)
from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class ResultCacheConfig:
    """The result cache: Redis at redis_url, or an in-process LRU when it is empty."""

    enabled: bool = on_off_option(
        True, "answer repeated greedy or seeded requests from the cache and coalesce identical ones",
        name="result_cache")
    redis_url: str = option("", "Redis for the result cache (redis://host:port/db); empty: an in-process LRU")
    ttl_s: float = option(3600.0, "how long a stored answer lives", name="result_cache_ttl_s")
    redis_timeout_s: float = option(0.05, "limit of every Redis call; a slower call is a miss")
    # The circuit breaker: after breaker_failures failures in a row, Redis is bypassed for breaker_cooldown_s,
    # then tried with one call.
    breaker_failures: int = option(5, "consecutive Redis failures after which Redis is bypassed",
                                   name="redis_breaker_failures")
    breaker_cooldown_s: float = option(10.0, "how long Redis is bypassed before it is tried again",
                                       name="redis_breaker_cooldown_s")
    max_entries: int = option(10_000, "in-process LRU (with Redis: its local copies): entries",
                              name="result_cache_max_entries")
    max_bytes: int = option(256 * 1024 * 1024, "in-process LRU (with Redis: its local copies): bytes of stored answers",
                            name="result_cache_max_bytes")
    # With Redis, each gateway keeps its own copy of an entry it read or wrote: popular answers skip the round trip.
    local_ttl_s: float = option(1.0, "with Redis: seconds this process keeps its own copy of an answer; 0: none",
                                name="result_cache_local_ttl_s")
    namespace: str = "flashstream"

    def __post_init__(self) -> None:
        for name in ("ttl_s", "redis_timeout_s", "breaker_cooldown_s"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"{flag_of(self, name)} must be positive, got {getattr(self, name)}")
        if not self.local_ttl_s >= 0:
            raise InvalidArgument(f"{flag_of(self, 'local_ttl_s')} must be 0 or more, got {self.local_ttl_s}")
        for name in ("breaker_failures", "max_entries", "max_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{flag_of(self, name)} must be at least 1, got {getattr(self, name)}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise InvalidArgument(f"--redis-url must start with redis://, rediss:// or unix://, got {self.redis_url!r}")
        if not self.namespace or ":" in self.namespace:
            raise InvalidArgument(f"result cache namespace must be non-empty without ':', got {self.namespace!r}")


@dataclass(frozen=True)
class EmbeddingCacheConfig:
    """The embedding cache: one entry per input vector, in Redis when the result cache has a redis_url (sharing
    its timeout and circuit breaker; with local copies in front while local_ttl_s > 0), else in an in-process LRU
    of its own."""

    enabled: bool = on_off_option(
        True, "answer embedding inputs seen before from the cache (Redis with --redis-url)", name="embedding_cache")
    ttl_s: float = option(86400.0, "how long a stored vector lives", name="embedding_cache_ttl_s")
    max_entries: int = option(100_000, "in-process LRU (with Redis: its local copies): vectors",
                              name="embedding_cache_max_entries")
    max_bytes: int = option(256 * 1024 * 1024, "in-process LRU (with Redis: its local copies): bytes of stored vectors",
                            name="embedding_cache_max_bytes")
    # With Redis, each gateway keeps its own copy of a vector it read or stored, so a repeated input skips the round
    # trip (a batch of wide vectors is a large reply). A vector never changes under its key, so only size and this
    # TTL bound a copy; the TTL is how long entries deleted from Redis may still answer here.
    local_ttl_s: float = option(60.0, "with Redis: seconds this process keeps its own copy of a vector; 0: none",
                                name="embedding_cache_local_ttl_s")

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise InvalidArgument(f"--embedding-cache-ttl-s must be positive, got {self.ttl_s}")
        if not self.local_ttl_s >= 0:
            raise InvalidArgument(f"{flag_of(self, 'local_ttl_s')} must be 0 or more, got {self.local_ttl_s}")
        for name in ("max_entries", "max_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{flag_of(self, name)} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class GatewayConfig:
    """server: gRPC address and drain; the HTTP port serves the OpenAI API and /metrics, /health, /ready."""

    tokenizers: tuple[str, ...] = csv_option("127.0.0.1:50051", "tokenizer addresses host:port[,host:port...]")
    server: ServerConfig = field(default_factory=ServerConfig)
    http_port: int = option(8000, "OpenAI-compatible HTTP API plus /metrics, /health, /ready",
                            env="gateway_http_port")
    api_keys: tuple[str, ...] = csv_option("", "comma-separated API keys; empty: no authentication")
    open_metrics: bool = option(
        False, "serve /metrics without an API key when keys are on (a scraper inside the network)")
    open_reflection: bool = option(False, "serve gRPC reflection without an API key when keys are on")
    request_timeout_s: float = option(600.0, "deadline of a request that sets none")
    reuse_port: bool = option(
        False, "share the gRPC and HTTP ports with other gateway replicas on this host (SO_REUSEPORT); the replica "
               "binds once a tokenizer is ready")
    max_body_bytes: int = option(4 * 1024 * 1024, "largest accepted HTTP request body")
    tokenizer_service: str = service_option("tokenizers")
    discovery_interval_s: float = option(5.0, "how often --tokenizer-service is resolved")
    cors_origins: tuple[str, ...] = csv_option(
        "", "comma-separated browser origins allowed to call the HTTP API (CORS), e.g. 'http://localhost:3000'; "
            "'*' allows any; empty: no CORS headers")
    result_cache: ResultCacheConfig = field(default_factory=ResultCacheConfig)
    embedding_cache: EmbeddingCacheConfig = field(default_factory=EmbeddingCacheConfig)

    def __post_init__(self) -> None:
        if not self.tokenizers and not self.tokenizer_service:
            raise InvalidArgument("at least one tokenizer address is needed (--tokenizers host:port[,...] or "
                                  "--tokenizer-service host:port)")
        if self.tokenizer_service:
            check_host_port(self.tokenizer_service, "tokenizer service")
        if not self.discovery_interval_s > 0:
            raise InvalidArgument(f"discovery_interval_s must be positive, got {self.discovery_interval_s}")
        for address in self.tokenizers:
            check_host_port(address, "tokenizer address")
        if not 0 <= self.http_port <= 65535:
            raise InvalidArgument(f"http_port must be in [0, 65535], got {self.http_port}")
        if not self.request_timeout_s > 0:
            raise InvalidArgument(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.max_body_bytes < 1024:
            raise InvalidArgument(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
