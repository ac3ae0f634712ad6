"""Entry point of the scheduler stage: `flashstream serve scheduler --workers host:port[,host:port...]`."""

from __future__ import annotations

import argparse
import asyncio
import logging

from flashstream.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.config import (add_options, add_server_args, config_from_args, new_parser, server_config,
                                    setup_logging)
from services.common.call_auth import internal_auth
from services.common.internal_tls import load_internal_tls
from services.common.grpc_server import StageServer, start_server
from services.common.metrics import Metrics
from services.common.stage import run_stage_process, serve_stage
from services.common.tracing import Tracing
from services.scheduler.config import SchedulerConfig, SchedulerStageConfig, StallConfig
from services.common.discovery import AddressDiscovery
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.worker_pool import WorkerPool

log = logging.getLogger(__name__)

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("flashstream serve scheduler", __doc__)
    add_server_args(parser, "scheduler")
    for config_cls in (SchedulerStageConfig, SchedulerConfig, StallConfig):
        add_options(parser, config_cls)
    return parser


def build_config(argv: list[str] | None = None) -> SchedulerStageConfig:
    args = build_parser().parse_args(argv)
    return config_from_args(
        SchedulerStageConfig, args,
        server=server_config(args),
        scheduler=config_from_args(SchedulerConfig, args),
        stall=config_from_args(StallConfig, args),
    )


class SchedulerStage:
    """The running stage: gRPC server, worker pool and servicer (tests start one in-process)."""

    def __init__(self, config: SchedulerStageConfig, metrics: Metrics | None = None,
                 tracing: Tracing | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics("scheduler")
        self.tls = load_internal_tls(config.server.internal_tls_dir)
        self.pool = WorkerPool(config.workers, config.scheduler, config.backoff, self.metrics, config.stall,
                               config.server.internal_token, self.tls)
        self.pool.drain_timeout_s = config.worker_drain_timeout_s
        self.discovery = (AddressDiscovery(self.pool, config.workers, config.worker_service,
                                           config.discovery_interval_s) if config.worker_service else None)
        self.tracing = tracing or Tracing.otlp("scheduler", config.server.otlp_endpoint)
        self.servicer = SchedulerServicer(self.pool, self.tracing)
        self.server: StageServer | None = None

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the scheduler stage is not started")
        return self.server.port

    def ready(self) -> bool:
        return self.pool.num_workers > 0 and not self.servicer.draining

    async def start(self) -> None:
        self.server = await start_server(
            self.config.server.address,
            [lambda s: scheduler_pb2_grpc.add_SchedulerServicer_to_server(self.servicer, s)],
            [SERVICE_NAME],
            serving=False,
            auth=internal_auth(self.config.server.internal_token),
            tls=self.tls,
        )
        loop = asyncio.get_running_loop()
        self.pool.on_workers_changed = lambda num: loop.create_task(self._set_serving())
        self.pool.start()
        if self.discovery is not None:
            self.discovery.start()

    async def _set_serving(self) -> None:
        self.metrics.num_workers.set(self.pool.num_workers)
        if self.server is not None:
            await self.server.set_serving(self.ready())

    async def stop(self, grace_s: float) -> None:
        self.servicer.draining = True
        if self.discovery is not None:
            await self.discovery.stop()
        if self.server is not None:
            await self.server.drain_and_stop(grace_s, self.servicer.drain)
        await self.pool.stop()
        self.tracing.shutdown()


async def serve(config: SchedulerStageConfig) -> int:
    stage = SchedulerStage(config)
    return await serve_stage(
        stage, config.server.host, config.server.status_port, config.server.drain_timeout_s,
        lambda: f"scheduler serving gRPC on {config.server.host}:{stage.port}, status HTTP on port "
                f"{config.server.status_port}, workers {','.join(config.workers) or '-'}"
                f"{' + those of ' + config.worker_service if config.worker_service else ''}")


def main(argv: list[str] | None = None) -> int:
    config = build_config(argv)
    setup_logging(config.server.log_level, "scheduler")
    return run_stage_process(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())
