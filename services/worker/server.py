"""Entry point of the worker stage: `flashstream serve worker --model DIR|PRESET [--load-format auto|dummy|fake]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from functools import partial

from flashstream.v1 import worker_pb2, worker_pb2_grpc

from services.common.call_auth import internal_auth
from services.common.config import add_server_args, env_default, new_parser, server_config, setup_logging
from services.common.errors import FlashStreamError
from services.common.grpc_server import StageServer, start_server
from services.common.internal_tls import load_internal_tls
from services.common.metrics import Metrics
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
    add = parser.add_argument
    add("--model", default=env_default("model", ""),
        help="Hugging Face checkpoint folder, or a preset (llama-3.2-1b, llama-3.1-8b, qwen2.5-0.5b) for dummy/fake")
    add("--model-id", default=env_default("model_id", ""), help="model name clients use (default: folder name)")
    add("--load-format", default=env_default("load_format", "auto"), choices=("auto", "dummy", "fake"),
        help="auto: safetensors weights; dummy: random weights of the real shapes; fake: no model, fixed token")
    add("--dtype", default=env_default("dtype", "auto"), choices=("auto", "float32", "float16", "bfloat16"),
        help="auto: bfloat16 (or the checkpoint's float16) on CUDA, float32 on CPU")
    add("--device", default=env_default("device", "auto"), help="auto, cpu, cuda, cuda:N")
    add("--quantization", default=env_default("quantization", ""), choices=("", "fp8"),
        help="fp8: quantise the linear layers to FP8 at load, one scale per output channel (FP8 checkpoints load "
             "as FP8 without it)")
    add("--kv-cache-dtype", default=env_default("kv_cache_dtype", "auto"), choices=("auto", "fp8"),
        help="auto: the model's dtype; fp8: float8_e4m3fn keys and values with per-layer scales (1, or the "
             "checkpoint's k_scale/v_scale), twice the tokens in the same memory")
    add("--block-size", type=int, default=env_default("block_size", 16), help="tokens per KV block")
    add("--num-kv-blocks", type=int, default=env_default("num_kv_blocks", 0),
        help="KV blocks to allocate (0: measured on CUDA, 1024 on CPU, 65536 in fake mode)")
    add("--gpu-memory-utilization", type=float, default=env_default("gpu_memory_utilization", 0.90),
        help="fraction of GPU memory for weights, activations and the KV cache")
    add("--max-num-seqs", type=int, default=env_default("max_num_seqs", WorkerConfig.max_num_seqs),
        help="most sequences per step")
    add("--max-num-batched-tokens", type=int,
        default=env_default("max_num_batched_tokens", WorkerConfig.max_num_batched_tokens), help="most tokens per step (also the memory profile's size)")
    add("--max-model-len", type=int, default=env_default("max_model_len", 0),
        help="longest prompt plus output (0: the model's max_position_embeddings)")
    add("--enforce-eager", action="store_true", default=env_default("enforce_eager", False),
        help="no CUDA graphs for decode steps")
    add("--fake-token-id", type=int, default=env_default("fake_token_id", -1),
        help="token fake mode returns (-1: the smallest non-EOS id)")
    add("--seed", type=int, default=env_default("seed", 0), help="seed of dummy weights")
    add("--worker-id", default=env_default("worker_id", ""),
        help="name in Worker.Info, one per process: a scheduler that saw it past its first steps gives them no "
             "kernel-compile time again (default: host-pid)")
    add("--kernel-profile-dir", default=env_default("kernel_profile_dir", ""),
        help="on SIGUSR1, trace the next --kernel-profile-steps steps with torch.profiler and write a summary of "
             "the device kernels here (default: off)")
    add("--kernel-profile-steps", type=int, default=env_default("kernel_profile_steps", 100),
        help="steps in a kernel profile window")
    add("--tensor-parallel-size", type=int, default=env_default("tensor_parallel_size", 1),
        help="processes that together hold the model, one per GPU (cuda:0 .. cuda:N-1; NCCL), or on the CPU "
             "(gloo); this process is rank 0 and serves gRPC, it starts the others")
    return parser



def build_config(argv: list[str] | None = None) -> WorkerConfig:
    args = build_parser().parse_args(argv)
    return WorkerConfig(
        model=args.model, model_id=args.model_id, load_format=args.load_format, dtype=args.dtype,
        device=args.device, quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype, block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        enforce_eager=args.enforce_eager, fake_token_id=args.fake_token_id, seed=args.seed,
        worker_id=args.worker_id, kernel_profile_dir=args.kernel_profile_dir,
        kernel_profile_steps=args.kernel_profile_steps, tensor_parallel_size=args.tensor_parallel_size,
        server=server_config(args),
    )


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
            loop.add_signal_handler(signal.SIGUSR1, self.servicer.kernel_profile.arm)
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
                f"{config.server.status_port}")


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
