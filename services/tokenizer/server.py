"""Entry point of the tokenizer stage: `flashstream serve tokenizer --scheduler host:port --model DIR`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, field

from flashstream.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from services.common.config import (ServerConfig, add_options, add_server_args, config_from_args, new_parser, option,
                                    server_config, setup_logging)
from services.common.errors import InvalidArgument
from services.common.allocator import return_large_buffers_to_os
from services.common.call_auth import internal_auth
from services.common.internal_tls import load_internal_tls
from services.common.grpc_server import StageServer, start_server
from services.common.metrics import Metrics
from services.common.stage import run_stage_process, serve_stage
from services.common.tracing import Tracing
from services.tokenizer.intake import EncodePool
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

SERVICE_NAME = tokenizer_pb2.DESCRIPTOR.services_by_name["Tokenizer"].full_name


@dataclass(frozen=True)
class TokenizerStageConfig:
    """Everything the tokenizer stage needs, built once in main()."""

    model_dir: str = option("", "model folder with tokenizer.json and tokenizer_config.json", name="model")
    scheduler: str = option("127.0.0.1:50052", "scheduler address host:port")
    model_id: str = option("", "model name clients use (default: the scheduler's model id)")
    encode_workers: int = option(2, "threads that render and encode prompts off the event loop")
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        if not self.model_dir:
            raise InvalidArgument("--model DIR (the folder with tokenizer.json) is required")
        if not self.scheduler:
            raise InvalidArgument("--scheduler host:port is required")
        if self.encode_workers < 1:
            raise InvalidArgument(f"--encode-workers must be at least 1, got {self.encode_workers}")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("flashstream serve tokenizer", __doc__)
    add_server_args(parser, "tokenizer")
    add_options(parser, TokenizerStageConfig)
    return parser


def build_config(argv: list[str] | None = None) -> TokenizerStageConfig:
    args = build_parser().parse_args(argv)
    return config_from_args(TokenizerStageConfig, args, server=server_config(args))


class TokenizerStage:
    """The running stage: gRPC server, encode pool, scheduler link and servicer (tests start one in-process)."""

    def __init__(self, config: TokenizerStageConfig, metrics: Metrics | None = None,
                 tracing: Tracing | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics("tokenizer")
        self.pool = EncodePool(TextTokenizer.from_dir(config.model_dir), config.encode_workers)
        self.tracing = tracing or Tracing.otlp("tokenizer", config.server.otlp_endpoint)
        self.tls = load_internal_tls(config.server.internal_tls_dir)
        self.servicer = TokenizerServicer(self.pool, config.scheduler, config.model_id, self.metrics,
                                          config.server.internal_token, self.tracing, self.tls)
        self.server: StageServer | None = None

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the tokenizer stage is not started")
        return self.server.port

    def ready(self) -> bool:
        return self.servicer.ready and not self.servicer.draining

    async def start(self) -> None:
        self.server = await start_server(
            self.config.server.address,
            [lambda s: tokenizer_pb2_grpc.add_TokenizerServicer_to_server(self.servicer, s)],
            [SERVICE_NAME],
            serving=False,
            auth=internal_auth(self.config.server.internal_token),
            tls=self.tls,
        )
        loop = asyncio.get_running_loop()
        # Health follows the scheduler stream: SERVING while it is open, NOT_SERVING while it is re-dialled.
        self.servicer.link.on_connected = lambda _: loop.create_task(self._set_serving())
        self.servicer.link.start()

    async def _set_serving(self) -> None:
        if self.server is not None:
            await self.server.set_serving(self.ready())

    async def stop(self, grace_s: float) -> None:
        self.servicer.draining = True
        if self.server is not None:
            await self.server.drain_and_stop(grace_s, self.servicer.drain)
        await self.servicer.link.close()
        self.pool.shutdown()
        self.tracing.shutdown()


async def serve(config: TokenizerStageConfig) -> int:
    stage = TokenizerStage(config)
    return await serve_stage(
        stage, config.server.host, config.server.status_port, config.server.drain_timeout_s,
        lambda: f"tokenizer serving gRPC on {config.server.host}:{stage.port}, status HTTP on port "
                f"{config.server.status_port}, scheduler {config.scheduler}")


def main(argv: list[str] | None = None) -> int:
    config = build_config(argv)
    setup_logging(config.server.log_level, "tokenizer")
    return_large_buffers_to_os()  # prompts of several MB arrive here, refused or not
    return run_stage_process(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())
