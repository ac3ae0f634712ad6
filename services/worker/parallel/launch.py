"""Starting and stopping a tensor-parallel worker: rank 0 is the worker process itself (it serves gRPC); it starts one process
per other rank, and all of them meet on a loopback port."""

from __future__ import annotations

import logging
import socket
from multiprocessing.process import BaseProcess

import torch.multiprocessing as mp

from services.worker.build import build_engine
from services.worker.config import WorkerConfig
from services.worker.engine import WorkerEngine
from services.worker.model_engine import resolve_device
from services.worker.parallel.group import TensorParallelGroup, join_group, leave_group
from services.worker.parallel.steps import follow

log = logging.getLogger(__name__)

# A rank other than 0 waits for the next step's command for as long as the worker stays idle, so that wait must
# outlast any idle spell (a worker idle for longer loses its other ranks). A collective of the model, once every
# rank has entered the step, fails after COLLECTIVE_TIMEOUT_S instead (a rank that died).
IDLE_TIMEOUT_S = 20 * 24 * 3600.0
COLLECTIVE_TIMEOUT_S = 300.0


def free_loopback_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def start_followers(config: WorkerConfig, init_method: str) -> list[BaseProcess]:
    """Starts ranks 1 .. tensor_parallel_size - 1, each building its share of the model and following rank 0."""
    context = mp.get_context("spawn")
    processes = [context.Process(target=run_follower, args=(rank, config, init_method), daemon=True,
                                 name=f"worker-rank-{rank}")
                 for rank in range(1, config.tensor_parallel_size)]
    for process in processes:
        process.start()
    return processes


def build_leader_engine(config: WorkerConfig, init_method: str) -> WorkerEngine:
    """Rank 0: joins the ranks and builds its share; call on the thread that will run every step."""
    tp = join_group(0, config.tensor_parallel_size, init_method, resolve_device(config.device, 0),
                    COLLECTIVE_TIMEOUT_S, IDLE_TIMEOUT_S)
    return build_engine(config, tp=tp)


def run_follower(rank: int, config: WorkerConfig, init_method: str) -> None:
    tp: TensorParallelGroup = join_group(rank, config.tensor_parallel_size, init_method,
                                         resolve_device(config.device, rank), COLLECTIVE_TIMEOUT_S, IDLE_TIMEOUT_S)
    try:
        engine = build_engine(config, tp=tp)
        follow(engine.runner, tp)
    finally:
        leave_group()


def stop_followers(processes: list[BaseProcess], timeout_s: float) -> None:
    """Waits for the followers to leave (after LeaderRunner.stop), killing any still there after timeout_s."""
    for process in processes:
        process.join(timeout_s)
        if process.is_alive():
            log.warning("tensor-parallel %s did not stop within %.0f s; killing it", process.name, timeout_s)
            process.kill()
            process.join()
