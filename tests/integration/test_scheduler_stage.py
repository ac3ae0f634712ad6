"""The scheduler stage over real gRPC on loopback, driving fake Worker servers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
from flashstream.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

from services.common.grpc_server import create_channel
from services.scheduler.config import SchedulerConfig
from tests.integration.scheduler_fake_worker import FakeWorkerConfig, run_stack, token_request, wait_until


def shape(plan):  # noqa: ANN001, ANN201
    return ([(n.seq_id, n.num_computed_tokens, n.num_scheduled_tokens) for n in plan.new_seqs],
            list(zip(plan.cached_seqs.seq_ids, plan.cached_seqs.num_scheduled_tokens)), plan.finished_seq_ids)


def test_repeated_long_prompt_is_prefilled_once():
    prompt = list(range(100, 140))  # 40 tokens: 10 blocks of 4

    async def test(stage, workers, client):  # noqa: ANN001
        await client.send([token_request("first", prompt)])
        await client.wait_done("first")
        await client.send([token_request("second", prompt)])
        await client.wait_done("second")
        new = [n for p in workers[0].plans for n in p.new_seqs]
        # The second request reuses 9 full blocks; the tenth holds its last prompt token and is recomputed.
        assert [(n.num_computed_tokens, n.num_scheduled_tokens) for n in new] == [(0, 40), (36, 4)]
        assert new[1].block_ids[:9] == new[0].block_ids[:9]
        assert [p.num_scheduled_tokens for p in workers[0].plans if p.new_seqs] == [40, 4]
        assert client.tokens("first") == client.tokens("second") == [140, 141, 142, 143]
        first, second = client.terminal("first").done, client.terminal("second").done
        assert (first.usage.cached_tokens, second.usage.cached_tokens) == (0, 36)
        assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (40, 4)
        assert stage.metrics.prefix_cache_hits._value.get() == 36
        assert stage.metrics.prefix_cache_queries._value.get() == 80

    run_stack(test)


def test_request_joins_at_the_next_step_and_a_finished_one_leaves_at_once():
    async def test(stage, workers, client):  # noqa: ANN001
        worker = workers[0]
        worker.permits = asyncio.Semaphore(0)
        await client.send([token_request("a", [1, 2, 3], max_tokens=4)])
        await wait_until(lambda: len(worker.plans) == 1)  # plan 0 arrived; plan 1 is on the wire
        await client.send([token_request("b", [50, 51], max_tokens=6)])
        await asyncio.sleep(0.05)
        for _ in range(12):
            worker.permits.release()
        await client.wait_done("a", "b")
        plans = [shape(p) for p in worker.plans]
        assert plans[:7] == [
            ([(0, 0, 3)], [], []),
            ([], [(0, 1)], []),  # planned before plan 0's result
            ([(1, 0, 2)], [(0, 1)], []),  # b joins in the first plan after it arrived
            ([], [(0, 1), (1, 1)], []),
            ([], [(1, 1)], []),  # a has its 4 tokens in flight: no more slots for it
            ([], [(1, 1)], [0]),  # a's last token arrived: it is gone from the very next plan
            ([], [(1, 1)], []),
        ]
        assert client.tokens("a") == [4, 5, 6, 7]
        assert client.tokens("b") == [52, 53, 54, 55, 56, 57]

    run_stack(test, scheduler=SchedulerConfig(max_steps_in_flight=2))  # the plans below are two in flight's


def test_one_worker_disconnecting_fails_only_its_requests_and_it_is_used_again_when_back():
    slow = FakeWorkerConfig(step_delay_s=0.01)

    async def test(stage, workers, client):  # noqa: ANN001
        await client.send([token_request(f"r{i}", [i + 1], max_tokens=60) for i in range(4)])
        await wait_until(lambda: all(len(client.tokens(f"r{i}")) >= 2 for i in range(4)))
        owners = {key[1]: name for key, name in stage.pool.engines._owner.items()}
        lost = {r for r, name in owners.items() if name == workers[0].address}
        assert len(lost) == 2  # least load: the pool alternated
        port = workers[0].port
        await workers[0].stop()
        await client.wait_done(*owners)
        for request_id in owners:
            terminal = client.terminal(request_id)
            if request_id in lost:
                assert terminal.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            else:
                assert terminal.done.finish_reason == common_pb2.FINISH_REASON_LENGTH
                assert client.tokens(request_id) == [int(request_id[1:]) + 2 + k for k in range(60)]
        assert stage.pool.num_workers == 1
        await workers[0].start(port)
        await wait_until(lambda: stage.pool.num_workers == 2)
        num_old_plans = len(workers[0].plans)
        await client.send([token_request("again", [7], max_tokens=2), token_request("twice", [8], max_tokens=2)])
        await client.wait_done("again", "twice")
        assert client.tokens("again") == [8, 9] and client.tokens("twice") == [9, 10]
        assert workers[0].num_streams == 2
        # "again" went to the other worker (tie: first connected); "twice" to the returned, least loaded one.
        assert [n.token_ids for p in workers[0].plans[num_old_plans:] for n in p.new_seqs] == [[8]]

    run_stack(test, workers=[slow, replace(slow, worker_id="other")])


def test_abort_ends_the_request_and_frees_its_blocks_at_the_next_step():
    async def test(stage, workers, client):  # noqa: ANN001
        await client.send([token_request("long", [1, 2, 3, 4, 5], max_tokens=200)])
        await wait_until(lambda: len(client.tokens("long")) >= 3)
        await client.send(aborts=["long", "unknown"])
        await client.wait_done("long")
        done = client.terminal("long").done
        assert done.finish_reason == common_pb2.FINISH_REASON_ABORT
        # Usage counts the prompt and every token streamed before the abort, no more.
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (5, len(client.tokens("long")))
        assert stage.pool.engines.kv_cache_usage == 0.0
        await wait_until(lambda: any(p.finished_seq_ids == [0] for p in workers[0].plans))
        assert "unknown" not in client.events

    run_stack(test, workers=[FakeWorkerConfig(step_delay_s=0.005)])


def test_full_queue_is_resource_exhausted_a_request_no_kv_cache_holds_is_invalid_argument_each_counted_by_code():
    async def test(stage, workers, client):  # noqa: ANN001
        workers[0].permits = asyncio.Semaphore(0)  # nothing finishes while the queue fills
        await client.send([token_request("running", [1])])
        await wait_until(lambda: stage.pool.engines.num_running == 1)
        await client.send([token_request("queued", [2])])
        await wait_until(lambda: stage.pool.engines.num_waiting == 1)
        await client.send([
            token_request("rejected", [3]),
            token_request("no-room", list(range(100)), max_tokens=1),  # 26 blocks of 4; the worker has 16
            # Past the worker's context (256): the tokenizer stage refuses these, unless the worker joined after it
            # read the pool's context; the scheduler checks again.
            token_request("past-context", list(range(300)), max_tokens=1),
            token_request("unchecked-sampling", [4], sampling={"temperature": -1.0}),  # the gateway refuses these
        ])
        await client.wait_done("rejected", "no-room", "past-context", "unchecked-sampling")
        codes = {rid: client.terminal(rid).error.code for rid in ("rejected", "no-room", "past-context",
                                                                  "unchecked-sampling")}
        assert codes == {"rejected": grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                         "no-room": grpc.StatusCode.INVALID_ARGUMENT.value[0],
                         "past-context": grpc.StatusCode.INVALID_ARGUMENT.value[0],
                         "unchecked-sampling": grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}  # trusted, then queued
        assert client.terminal("no-room").error.message == (
            "prompt plus max_tokens needs 26 KV blocks, more than the worker's 16: it can never fit the KV cache")
        assert client.terminal("past-context").error.message == (
            "prompt plus max_tokens (301 tokens) exceeds the worker's context (256 tokens)")
        errors = stage.metrics.scheduler_request_errors
        assert {code: errors.labels(code)._value.get() for code in ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT",
                                                                    "INTERNAL")} == {
            "RESOURCE_EXHAUSTED": 2, "INVALID_ARGUMENT": 2, "INTERNAL": 0}
        for _ in range(100):
            workers[0].permits.release()
        await client.wait_done("running", "queued")
        assert client.tokens("running") == [2, 3, 4, 5] and client.tokens("queued") == [3, 4, 5, 6]

    run_stack(test, workers=[FakeWorkerConfig(max_num_seqs=1, num_kv_blocks=16)],
              scheduler=SchedulerConfig(max_queued_requests=1))


def test_deadline_ends_the_request_with_deadline_exceeded():
    async def test(stage, workers, client):  # noqa: ANN001
        deadline = time.time() + 0.3
        await client.send([token_request("late", [1], max_tokens=200, deadline_unix_s=deadline),
                           token_request("on-time", [5], max_tokens=3)])
        await client.wait_done("late", "on-time")
        assert client.terminal("late").error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert stage.metrics.scheduler_request_errors.labels("DEADLINE_EXCEEDED")._value.get() == 1
        assert time.time() >= deadline
        assert client.terminal("on-time").done.finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert stage.pool.engines.kv_cache_usage == 0.0

    run_stack(test, workers=[FakeWorkerConfig(step_delay_s=0.02)])


def test_losing_the_upstream_stream_aborts_its_requests_and_frees_their_blocks():
    async def test(stage, workers, client):  # noqa: ANN001
        await client.send([token_request("orphan", [1, 2], max_tokens=200)])
        await wait_until(lambda: len(client.tokens("orphan")) >= 2)
        await client.close()
        await wait_until(lambda: stage.pool.engines.num_running == 0)
        assert stage.pool.engines.kv_cache_usage == 0.0
        async with create_channel(f"127.0.0.1:{stage.port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            states = stub.WatchEngine(common_pb2.WatchEngineRequest())
            state = await states.read()
            states.cancel()
            info = await stub.Info(scheduler_pb2.SchedulerInfoRequest())
        assert (state.num_running, state.num_waiting, state.kv_cache_usage, len(state.workers)) == (0, 0, 0.0, 1)
        assert (info.model_id, info.block_size, info.num_kv_blocks, info.max_model_len, info.num_workers) == (
            "fake-model", 4, 64, 256, 1)

    run_stack(test, workers=[FakeWorkerConfig(step_delay_s=0.005)])


def test_health_is_serving_only_while_a_worker_is_connected():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.common.config import ServerConfig
    from services.scheduler.config import BackoffConfig, SchedulerStageConfig
    from services.scheduler.server import SchedulerStage
    from tests.integration.scheduler_fake_worker import FakeWorkerServer

    async def main() -> None:
        worker = FakeWorkerServer()
        port = await worker.start()
        await worker.stop()  # a free port nobody listens on yet
        stage = SchedulerStage(SchedulerStageConfig(ServerConfig(port=0), (f"127.0.0.1:{port}",),
                                                    backoff=BackoffConfig(0.05, 0.1)))
        await stage.start()
        async with create_channel(f"127.0.0.1:{stage.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status() -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service="flashstream.v1.Scheduler"))).status

            try:
                await asyncio.sleep(0.2)
                assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
                assert not stage.ready()
                await worker.start(port)
                await wait_until(lambda: stage.ready())
                await asyncio.sleep(0.05)
                assert await status() == health_pb2.HealthCheckResponse.SERVING
                await worker.stop()
                await wait_until(lambda: not stage.ready())
                await asyncio.sleep(0.05)
                assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
            finally:
                await stage.stop(0.1)
                await worker.stop()

    asyncio.run(main())
