"""The gateway's configuration, built once in main() from flags and FLASHSTREAM_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import ServerConfig
from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class GatewayConfig:
    """server: gRPC address and drain; the HTTP port serves the OpenAI API and /metrics, /health, /ready."""

    tokenizers: tuple[str, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    http_port: int = 8000
    api_keys: tuple[str, ...] = ()
    request_timeout_s: float = 600.0
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.tokenizers:
            raise InvalidArgument("at least one tokenizer address is needed (--tokenizers host:port[,...])")
        for address in self.tokenizers:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise InvalidArgument(f"tokenizer address must be host:port, got {address!r}")
        if not 0 <= self.http_port <= 65535:
            raise InvalidArgument(f"http_port must be in [0, 65535], got {self.http_port}")
        if not self.request_timeout_s > 0:
            raise InvalidArgument(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.max_body_bytes < 1024:
            raise InvalidArgument(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
