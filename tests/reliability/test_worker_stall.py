"""A stalled worker (a stopped process: neither step results nor Info answers) is noticed within 5 s with the
default StallConfig: its requests that streamed tokens end with UNAVAILABLE, those without a token move to the
other worker and finish as if nothing happened, it gets no new work until it answers again, and the scheduler's
readiness follows the workers it still has. A worker that answered again and stalls within the first steps of its
new connection is noticed as fast (only a worker process's first steps get the kernel-compile allowance). Every
request ends exactly once; no KV block stays in use.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from flashstream.v1 import common_pb2

from services.scheduler.config import StallConfig
from tests.integration.scheduler_fake_worker import FakeWorkerConfig, run_stack, token_request, wait_until

pytestmark = [pytest.mark.timeout(120)]

DETECTION_LIMIT_S = 5.0
STEP_DELAY_S = 0.01


def _worker(worker_id: str) -> FakeWorkerConfig:
    return FakeWorkerConfig(worker_id=worker_id, step_delay_s=STEP_DELAY_S, num_kv_blocks=256, max_model_len=512)


def _terminals(client, request_ids) -> list:  # noqa: ANN001
    return [client.events.get(r, []) for r in request_ids]


def test_a_stalled_worker_is_dropped_within_5_s_and_its_tokenless_requests_finish_on_the_other():
    async def test(stage, workers, client):  # noqa: ANN001
        stalling, healthy = workers
        # Past the first steps of each connection (they get the kernel-compile allowance).
        warm = [f"warm{i}" for i in range(16)]
        await client.send([token_request(r, [i + 1], max_tokens=12) for i, r in enumerate(warm)])
        await client.wait_done(*warm, timeout=30)
        assert min(len(stalling.plans), len(healthy.plans)) >= StallConfig().first_steps

        running = [f"run{i}" for i in range(6)]  # long requests, streaming on both workers
        await client.send([token_request(r, [100 + i], max_tokens=400) for i, r in enumerate(running)])
        await client.wait_for(lambda: all(len(client.tokens(r)) >= 2 for r in running))
        stalling.pause()
        paused_at = time.monotonic()
        fresh = [f"fresh{i}" for i in range(6)]  # no token yet when the stall is found
        await client.send([token_request(r, [200 + i], max_tokens=8) for i, r in enumerate(fresh)])
        await wait_until(lambda: stage.pool.num_workers == 1, timeout=DETECTION_LIMIT_S + 1)
        detection_s = time.monotonic() - paused_at
        print(f"stall detected after {detection_s:.2f} s")
        assert detection_s <= DETECTION_LIMIT_S
        assert stage.ready()  # one healthy worker left

        await client.wait_done(*running, *fresh, timeout=30)
        failed = [r for r, t in zip(running, _terminals(client, running)) if t[0].HasField("error")]
        assert failed, "some long requests were streaming on the stalled worker"
        for request_id in failed:
            [terminal] = _terminals(client, [request_id])[0]
            assert terminal.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert terminal.error.message.startswith(f"worker {stalling.address} returned no step result for ")
        for request_id, terminals in zip(fresh, _terminals(client, fresh)):
            assert len(terminals) == 1 and terminals[0].done.finish_reason == common_pb2.FINISH_REASON_LENGTH
            assert len(client.tokens(request_id)) == 8  # moved to the healthy worker: the client saw nothing
        for terminals in _terminals(client, running):
            assert len(terminals) == 1

        num_plans = len(stalling.plans)
        later = [f"later{i}" for i in range(4)]
        await client.send([token_request(r, [300 + i], max_tokens=4) for i, r in enumerate(later)])
        await client.wait_done(*later)
        assert len(stalling.plans) == num_plans  # no new work while it does not answer

        stalling.resume()
        await wait_until(lambda: stage.pool.num_workers == 2, timeout=10)
        await wait_until(lambda: stage.pool.engines.num_running == 0 and stage.pool.engines.num_waiting == 0)
        assert stage.pool.engines.kv_cache_usage == 0.0

    run_stack(test, workers=[_worker("stalling"), _worker("healthy")])


def test_the_scheduler_is_not_ready_while_its_only_worker_is_stalled_each_time_it_stalls():
    async def test(stage, workers, client):  # noqa: ANN001
        [worker] = workers
        warm = [f"warm{i}" for i in range(4)]
        await client.send([token_request(r, [i + 1], max_tokens=12) for i, r in enumerate(warm)])
        await client.wait_done(*warm)
        for attempt in ("long", "again"):  # "again": within the first steps of its new connection
            await client.send([token_request(attempt, [7], max_tokens=400)])
            await client.wait_for(lambda: len(client.tokens(attempt)) >= 2)  # noqa: B023
            assert len(client.tokens(attempt)) < StallConfig().first_steps
            worker.pause()
            paused_at = time.monotonic()
            await wait_until(lambda: not stage.ready(), timeout=DETECTION_LIMIT_S + 1)
            print(f"{attempt}: stall detected after {time.monotonic() - paused_at:.2f} s")
            assert time.monotonic() - paused_at <= DETECTION_LIMIT_S
            await client.wait_done(attempt)
            assert client.terminal(attempt).error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            worker.resume()
            await wait_until(stage.ready, timeout=10)
        await client.send([token_request("after", [9], max_tokens=3)])
        await client.wait_done("after")
        assert client.terminal("after").done.finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert stage.pool.engines.kv_cache_usage == 0.0

    run_stack(test, workers=[_worker("only")])


def test_the_first_steps_of_a_connection_get_the_kernel_compile_allowance():
    async def test(stage, workers, client):  # noqa: ANN001
        [worker] = workers
        worker.pause()  # before any step: the first steps may compile kernels
        await client.send([token_request("first", [5], max_tokens=3)])
        await asyncio.sleep(StallConfig().timeout_s + 1.0)
        assert stage.pool.num_workers == 1
        worker.resume()
        await client.wait_done("first")
        assert client.terminal("first").done.finish_reason == common_pb2.FINISH_REASON_LENGTH

    run_stack(test, workers=[_worker("compiling")])
