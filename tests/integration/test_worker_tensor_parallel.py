"""A worker started with tensor_parallel_size 2 on the CPU (gloo over loopback) serves over gRPC the tokens of a
one-device worker, with two plans in flight; its other rank leaves when it stops, and a rank that dies makes it
not ready."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from flashstream.v1 import worker_pb2, worker_pb2_grpc

from services.common.config import ServerConfig
from services.common.grpc_server import create_channel
from services.worker.config import WorkerConfig
from services.worker.server import FOLLOWER_STOP_S, WorkerStage
from tests.integration.test_worker_grpc import NUM_TOKENS, PROMPT_A, PROMPT_B, _new_seq
from tests.unit.worker.helpers import hf_greedy, make_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint("llama", tmp_path_factory.mktemp("llama"))


def _plans() -> list[worker_pb2.StepPlan]:
    """A prefill of A and B, a decode of both, then B finishes and C (a prompt of A's first 9 tokens) joins."""
    plans = [worker_pb2.StepPlan(step_id=1, new_seqs=[_new_seq(1, PROMPT_A, [0, 1]), _new_seq(2, PROMPT_B, [2])])]
    plans.append(worker_pb2.StepPlan(step_id=2, cached_seqs=worker_pb2.CachedSeqs(
        seq_ids=[1, 2], num_scheduled_tokens=[1, 1], num_new_blocks=[0, 0])))
    plans.append(worker_pb2.StepPlan(step_id=3, new_seqs=[_new_seq(3, PROMPT_A[:9], [3])], finished_seq_ids=[2],
                                     cached_seqs=worker_pb2.CachedSeqs(seq_ids=[1], num_scheduled_tokens=[1],
                                                                       num_new_blocks=[0])))
    for step in range(4, NUM_TOKENS + 3):
        plans.append(worker_pb2.StepPlan(step_id=step, cached_seqs=worker_pb2.CachedSeqs(
            seq_ids=[1, 3], num_scheduled_tokens=[1, 1], num_new_blocks=[0, 0])))
    return plans


async def _serve_and_drive(folder: Path, tensor_parallel_size: int) -> tuple[dict[int, list[int]], list[int]]:
    """Tokens per sequence from a worker of the given size, and the exit codes of its other ranks' processes."""
    stage = await _start(folder, tensor_parallel_size)
    followers = list(stage.followers)
    tokens: dict[int, list[int]] = {}
    try:
        async with create_channel(f"127.0.0.1:{stage.port}") as channel:
            call = worker_pb2_grpc.WorkerStub(channel).Step()
            plans = _plans()
            await call.write(plans[0])
            results = []
            for plan in plans[1:]:  # two plans in flight
                await call.write(plan)
                results.append(await call.read())
            await call.done_writing()
            results.append(await call.read())
        for result in results:
            assert not result.errors, result.errors
            for seq_id, token_id in zip(result.sampled.seq_ids, result.sampled.token_ids, strict=True):
                tokens.setdefault(seq_id, []).append(token_id)
        runner = stage.servicer.engine.runner
        # timing-dependent, not asserted
        print(f"TP={tensor_parallel_size}: steps queued ahead of their turn:",
              getattr(runner, "runner", runner).num_overlapped_steps)
    finally:
        await stage.stop(1.0)
    return tokens, [process.exitcode for process in followers]


async def _start(folder: Path, tensor_parallel_size: int) -> WorkerStage:
    stage = WorkerStage(WorkerConfig(model=str(folder), device="cpu", dtype="float32", num_kv_blocks=32,
                                     max_model_len=256, tensor_parallel_size=tensor_parallel_size,
                                     server=ServerConfig(port=0)))
    await stage.start()
    return stage


@pytest.mark.timeout(60)
def test_a_worker_whose_other_rank_died_is_not_ready_and_still_stops(folder: Path) -> None:
    async def scenario() -> tuple[bool, bool, float]:
        stage = await _start(folder, 2)
        ready_before = stage.ready()
        stage.followers[0].kill()
        stage.followers[0].join()
        ready_after = stage.ready()
        start = time.monotonic()
        await stage.stop(1.0)
        return ready_before, ready_after, time.monotonic() - start

    ready_before, ready_after, stop_s = asyncio.run(scenario())
    assert (ready_before, ready_after) == (True, False)
    assert stop_s < FOLLOWER_STOP_S + 5


@pytest.mark.timeout(180)
def test_a_tensor_parallel_worker_serves_the_tokens_of_one_device(folder: Path) -> None:
    one, no_followers = asyncio.run(_serve_and_drive(folder, 1))
    two, exit_codes = asyncio.run(_serve_and_drive(folder, 2))
    assert two == one
    assert no_followers == [] and exit_codes == [0]
    expected_a, _ = hf_greedy(folder, PROMPT_A, len(one[1]))
    expected_c, _ = hf_greedy(folder, PROMPT_A[:9], len(one[3]))
    assert (one[1], one[3], len(one[2])) == (expected_a, expected_c, 2)
