"""Entry point of the worker stage: `flashstream serve worker --model DIR|PRESET [--load-format auto|dummy|fake]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from functools import partial

from aiohttp import web
from flashstream.v1 import worker_pb2, worker_pb2_grpc

from services.common.call_auth import internal_auth
from services.common.config import (add_options, add_server_args, config_from_args, new_parser, server_config,
                                    setup_logging)
from services.common.errors import FailedPrecondition, FlashStreamError
from services.common.grpc_server import StageServer, start_server
from services.common.internal_tls import load_internal_tls
from services.common.metrics import Metrics
from services.common.openai_errors import error_response
from services.common.stage import run_stage_process, serve_stage
from services.common.tracing import Tracing
from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from services.worker.model_config import ModelConfig
from services.worker.quantization import FP8
from services.worker.servicer import WorkerServicer

log = logging.getLogger(__name__)

FOLLOWER_STOP_S = 10.0  # how long stopping waits for the other tensor-parallel ranks before killing them
SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("flashstream serve worker", __doc__)
    add_server_args(parser, "worker")
    add_options(parser, WorkerConfig)
    return parser


def build_config(argv: list[str] | None = None) -> WorkerConfig:
    args = build_parser().parse_args(argv)
    return config_from_args(WorkerConfig, args, server=server_config(args))


class WorkerStage:
    """The running stage: the gRPC server starts NOT_SERVING, turns SERVING once the engine is built."""

    def __init__(self, config: WorkerConfig, metrics: Metrics | None = None, tracing: Tracing | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics("worker")
        self.tracing = tracing or Tracing.otlp("worker", config.server.otlp_endpoint)
        self.servicer = WorkerServicer(self.metrics, self.tracing)
        if config.kernel_profile_dir:
            from services.worker.kernel_profile import KernelProfile  # torch, only when asked for

            self.servicer.kernel_profile = KernelProfile(config.kernel_profile_dir, config.kernel_profile_steps)
        self.server: StageServer | None = None
        self.followers: list = []  # the processes of tensor-parallel ranks 1 .. N-1

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the worker stage is not started")
        return self.server.port

    def add_routes(self, app: web.Application) -> None:
        """POST /kernel-profile on the status port: opens a kernel profile window at the next step (202), or says
        that profiling is off (409)."""

        async def post_kernel_profile(_: web.Request) -> web.Response:
            profile = self.servicer.kernel_profile
            if profile is None:
                status, body, headers = error_response(FailedPrecondition(
                    "kernel profiling is off: start the worker with --kernel-profile-dir", "kernel_profile_off"))
                return web.json_response(body, status=status, headers=headers)
            profile.arm()
            return web.json_response({"status": "armed", "steps": profile.count, "dir": str(profile.out_dir)},
                                     status=202)

        app.router.add_post("/kernel-profile", post_kernel_profile)

    def ready(self) -> bool:
        # A tensor-parallel rank that died leaves rank 0 unable to run a step.
        return (self.servicer.engine is not None and not self.servicer.draining and not self.servicer.step_stuck()
                and all(process.is_alive() for process in self.followers))

    async def start(self) -> None:
        """Starts the server, builds the engine off the event loop (health answers meanwhile), then SERVING."""
        self.server = await start_server(
            self.config.server.address,
            [lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(self.servicer, s)],
            [SERVICE_NAME],
            serving=False,
            auth=internal_auth(self.config.server.internal_token),
            tls=load_internal_tls(self.config.server.internal_tls_dir),
        )
        loop = asyncio.get_running_loop()
        if self.servicer.kernel_profile is not None:
            log.info("kernel profile: POST /kernel-profile on the status port traces the next %d steps into %s",
                     self.servicer.kernel_profile.count, self.servicer.kernel_profile.out_dir)
        build = partial(build_engine, self.config)
        if self.config.tensor_parallel_size > 1:
            from services.worker.parallel import launch  # imports torch, which fake mode does without

            init_method = launch.free_loopback_address()
            self.followers = launch.start_followers(self.config, init_method)
            build = partial(launch.build_leader_engine, self.config, init_method)
        # Built on the model thread: under tensor parallelism every collective of rank 0 runs there.
        engine = await loop.run_in_executor(self.servicer.executor, build)
        self.servicer.engine = engine
        info = engine.info
        self.metrics.set_model(info.model_id)
        # Only decoders quantise their projections; an encoder's config has no quantization.
        fp8 = isinstance(info.model, ModelConfig) and FP8 in (self.config.quantization, info.model.quantization)
        tp = self.config.tensor_parallel_size
        log.info("model %s (%s, revision %s) on %s %s%s%s: %d KV blocks of %d tokens (%s cache), max_model_len %d",
                 info.model_id, info.model.architecture, info.model_revision, info.device, info.dtype,
                 " with FP8 projections" if fp8 else "", f", tensor parallel over {tp} ranks" if tp > 1 else "",
                 info.num_kv_blocks, info.block_size,
                 "float8_e4m3fn" if self.config.kv_cache_dtype == FP8 else info.dtype, info.max_model_len)
        await self.server.set_serving(True)

    async def stop(self, grace_s: float) -> None:
        self.servicer.draining = True
        if self.server is not None:
            await self.server.drain_and_stop(grace_s, self.servicer.drain)
        if self.followers:
            await self._stop_followers()
        self.servicer.shutdown()
        self.tracing.shutdown()


    async def _stop_followers(self) -> None:
        """Tells the other tensor-parallel ranks to leave (on the model thread, after the last step) and waits
        for their processes."""
        from services.worker.parallel import launch

        loop = asyncio.get_running_loop()
        runner = self.servicer.engine.runner if self.servicer.engine is not None else None
        if runner is not None:
            try:
                await asyncio.wait_for(loop.run_in_executor(self.servicer.executor, runner.stop), FOLLOWER_STOP_S)
            except TimeoutError:
                log.warning("the model thread did not reach the other ranks within %.0f s", FOLLOWER_STOP_S)
            except RuntimeError as exc:  # a rank that died closed its connections
                log.warning("could not tell the other ranks to stop: %s", exc)
        await loop.run_in_executor(None, launch.stop_followers, self.followers, FOLLOWER_STOP_S)
        self.followers = []
        await loop.run_in_executor(self.servicer.executor, launch.leave_group)


async def serve(config: WorkerConfig) -> int:
    stage = WorkerStage(config)
    return await serve_stage(
        stage, config.server.host, config.server.status_port, config.server.drain_timeout_s,
        lambda: f"worker serving gRPC on {config.server.host}:{stage.port}, status HTTP on port "
                f"{config.server.status_port}", stage.add_routes)


def main(argv: list[str] | None = None) -> int:
    config = build_config(argv)
    setup_logging(config.server.log_level, "worker")
    try:
        return run_stage_process(serve(config))
    except FlashStreamError as exc:
        log.error("worker failed to start: %s", exc.message)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
