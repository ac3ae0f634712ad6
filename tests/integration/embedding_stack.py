"""Real stages in one event loop (embedding and tracing tests): per model folder a worker, a scheduler and a
tokenizer, and one gateway in front of them all (routing by model name)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import EmbeddingCacheConfig, GatewayConfig, ResultCacheConfig
from gateway.server import GatewayServer
from gateway.tokenizer_client import ConnectionConfig
from services.common.config import ServerConfig
from services.common.tracing import Tracing
from services.scheduler.config import BackoffConfig, SchedulerConfig
from services.scheduler.server import SchedulerStage, SchedulerStageConfig
from services.tokenizer.server import TokenizerStage, TokenizerStageConfig
from services.worker.server import WorkerStage, build_config
from tests.integration.fake_tokenizer import wait_until


@dataclass
class EmbeddingStack:
    gateway: GatewayServer
    workers: list[WorkerStage] = field(default_factory=list)
    stages: list = field(default_factory=list)  # every stage, in start order

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.gateway.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"


@contextlib.asynccontextmanager
async def embedding_stack(
    models: Sequence[tuple[Path, str]],
    api_keys: tuple[str, ...] = (),
    redis_url: str = "",
    embedding_cache: EmbeddingCacheConfig | None = None,
    tracing: Callable[[str], Tracing] | None = None,
    internal_token: str = "",
) -> AsyncIterator[EmbeddingStack]:
    """models: (folder, model id) pairs, each served by its own worker, scheduler and tokenizer. `tracing` gives
    each stage its tracer, by stage name; `internal_token` is the stages' shared secret ("": none)."""
    tracer = tracing or (lambda stage: Tracing())
    stages: list = []
    tokenizers: list[str] = []
    workers: list[WorkerStage] = []
    gateway = None
    try:
        for folder, model_id in models:
            worker = WorkerStage(build_config(["--port", "0", "--status-port", "0", "--model", str(folder),
                                               "--model-id", model_id, "--device", "cpu", "--num-kv-blocks", "64",
                                               "--max-num-batched-tokens", "2048", "--internal-token",
                                               internal_token]), tracing=tracer("worker"))
            await worker.start()
            stages.append(worker)
            workers.append(worker)
            scheduler = SchedulerStage(SchedulerStageConfig(ServerConfig(port=0, internal_token=internal_token),
                                                            (f"127.0.0.1:{worker.port}",),
                                                            SchedulerConfig(), BackoffConfig(0.05, 0.2)),
                                       tracing=tracer("scheduler"))
            await scheduler.start()
            stages.append(scheduler)
            await wait_until(lambda s=scheduler: s.pool.num_workers == 1, 30)
            tokenizer = TokenizerStage(TokenizerStageConfig(str(folder), f"127.0.0.1:{scheduler.port}",
                                                            server=ServerConfig(port=0,
                                                                                internal_token=internal_token)),
                                       tracing=tracer("tokenizer"))
            await tokenizer.start()
            stages.append(tokenizer)
            tokenizers.append(f"127.0.0.1:{tokenizer.port}")
        config = GatewayConfig(
            tokenizers=tuple(tokenizers),
            server=ServerConfig(host="127.0.0.1", port=0, drain_timeout_s=2.0, internal_token=internal_token),
            http_port=0, api_keys=api_keys,
            result_cache=ResultCacheConfig(redis_url=redis_url, redis_timeout_s=0.2, breaker_failures=2,
                                           breaker_cooldown_s=0.3),
            embedding_cache=embedding_cache or EmbeddingCacheConfig(),
        )
        gateway = GatewayServer(config, ConnectionConfig(info_interval_s=0.2, reconnect_min_s=0.05,
                                                         reconnect_max_s=0.2), tracing=tracer("gateway"))
        await gateway.start()
        await wait_until(lambda: len(gateway.core.list_models()) == len(models)
                         and all(c.ready for c in gateway.router.connections), 30)
        yield EmbeddingStack(gateway, workers, stages)
    finally:
        if gateway is not None:
            await gateway.stop(0.5)
        for stage in reversed(stages):
            await stage.stop(0.1)
