"""The gateway's configuration, built once in main() from flags and FLASHSTREAM_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ServerConfig, check_host_port
from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class ResultCacheConfig:
    """The result cache: Redis at redis_url, or an in-process LRU when it is empty."""

    enabled: bool = True
    redis_url: str = ""
    ttl_s: float = 3600.0
    redis_timeout_s: float = 0.05
    breaker_failures: int = 5  # consecutive Redis failures that open the breaker
    breaker_cooldown_s: float = 10.0  # how long an open breaker bypasses Redis before one trial call
    max_entries: int = 10_000  # in-process LRU bounds (with Redis: of the local copies)
    max_bytes: int = 256 * 1024 * 1024
    local_ttl_s: float = 1.0  # with Redis: how long this process keeps its own copy of a result; 0: none
    namespace: str = "flashstream"

    def __post_init__(self) -> None:
        for name in ("ttl_s", "redis_timeout_s", "breaker_cooldown_s"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"result cache {name} must be positive, got {getattr(self, name)}")
        if not self.local_ttl_s >= 0:
            raise InvalidArgument(f"result cache local_ttl_s must be 0 or more, got {self.local_ttl_s}")
        for name in ("breaker_failures", "max_entries", "max_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"result cache {name} must be at least 1, got {getattr(self, name)}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise InvalidArgument(f"redis url must start with redis://, rediss:// or unix://, got {self.redis_url!r}")
        if not self.namespace or ":" in self.namespace:
            raise InvalidArgument(f"result cache namespace must be non-empty without ':', got {self.namespace!r}")


@dataclass(frozen=True)
class EmbeddingCacheConfig:
    """The embedding cache: one entry per input vector, in Redis when the result cache has a redis_url (sharing
    its timeout and circuit breaker), else in an in-process LRU of its own."""

    enabled: bool = True
    ttl_s: float = 86400.0
    max_entries: int = 100_000  # in-process LRU bounds
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise InvalidArgument(f"embedding cache ttl_s must be positive, got {self.ttl_s}")
        for name in ("max_entries", "max_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"embedding cache {name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class GatewayConfig:
    """server: gRPC address and drain; the HTTP port serves the OpenAI API and /metrics, /health, /ready."""

    tokenizers: tuple[str, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    http_port: int = 8000
    api_keys: tuple[str, ...] = ()
    request_timeout_s: float = 600.0
    max_body_bytes: int = 4 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the HTTP API ("*": any); none: no CORS
    result_cache: ResultCacheConfig = field(default_factory=ResultCacheConfig)
    embedding_cache: EmbeddingCacheConfig = field(default_factory=EmbeddingCacheConfig)
    reuse_port: bool = False  # share the gRPC and HTTP ports with other gateway replicas (SO_REUSEPORT)
    open_metrics: bool = False  # /metrics without an API key (for a scraper inside a trusted network)
    open_reflection: bool = False  # gRPC reflection without an API key
    tokenizer_service: str = ""  # host:port whose DNS addresses are tokenizers too (a headless Service)
    discovery_interval_s: float = 5.0  # how often tokenizer_service is resolved again

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
