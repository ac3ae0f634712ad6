"""Faults under load: random aborts, a worker killed and restarted, an upstream stream cut, all at once.

Every request must end with exactly one terminal event and nothing after it; requests that ran to the
end must carry exactly the tokens the fake model produces; afterwards no block is in use.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from flashstream.v1 import common_pb2

from services.common.grpc_server import create_channel
from tests.integration.scheduler_fake_worker import (
    FakeWorkerConfig,
    SchedulerStreamClient,
    run_stack,
    token_request,
    wait_until,
)

NUM_STREAMS = 3
NUM_REQUESTS = 20  # per stream


def check_stream(client: SchedulerStreamClient, prompts: dict[str, list[int]], max_tokens: dict[str, int]) -> dict:
    outcomes: dict[str, int] = {}
    for request_id, prompt in prompts.items():
        events = client.events[request_id]
        assert len(events) == 1, f"{request_id}: {len(events)} terminal events"
        assert request_id not in client.late_tokens, f"{request_id}: tokens after its end"
        last = events[-1]
        tokens = client.tokens(request_id)
        assert tokens == [(prompt[-1] + 1 + k) % 1000 for k in range(len(tokens))], request_id
        if last.HasField("done") and last.done.finish_reason == common_pb2.FINISH_REASON_LENGTH:
            assert len(tokens) == max_tokens[request_id] == last.done.usage.completion_tokens
        key = f"error {last.error.code}" if last.HasField("error") else f"done {last.done.finish_reason}"
        outcomes[key] = outcomes.get(key, 0) + 1
    return outcomes


@pytest.mark.slow
def test_every_request_ends_exactly_once_through_aborts_worker_loss_and_stream_loss():
    rng = random.Random(7)
    shared = [rng.randrange(1, 900) for _ in range(24)]

    async def test(stage, workers, first_client):  # noqa: ANN001
        channels = [create_channel(f"127.0.0.1:{stage.port}") for _ in range(NUM_STREAMS - 1)]
        clients = [first_client] + [SchedulerStreamClient(c) for c in channels]
        doomed = SchedulerStreamClient(create_channel(f"127.0.0.1:{stage.port}"))  # cut mid-way
        prompts = [{} for _ in clients]
        max_tokens = [{} for _ in clients]
        for n in range(NUM_REQUESTS):
            for i, client in enumerate(clients):
                request_id = f"s{i}-r{n}"
                prompt = shared[: rng.randrange(0, 24)] + [rng.randrange(1, 900) for _ in range(rng.randrange(1, 12))]
                prompts[i][request_id] = prompt
                max_tokens[i][request_id] = rng.randrange(1, 40)
                await client.send([token_request(request_id, prompt, max_tokens[i][request_id])])
            if n <= NUM_REQUESTS // 2:
                await doomed.send([token_request(f"d{n}", [n + 1], 500)])
            if n % 3 == 1:
                i = rng.randrange(len(clients))
                await clients[i].send(aborts=[f"s{i}-r{rng.randrange(n + 1)}"])
            if n == NUM_REQUESTS // 2:
                port = workers[0].port
                await workers[0].stop()
                await doomed.close()
            await asyncio.sleep(0.01)
        await workers[0].start(port)
        await wait_until(lambda: stage.pool.num_workers == 2)
        for i, client in enumerate(clients):
            await client.wait_done(*prompts[i], timeout=30.0)
        outcomes: dict[str, int] = {}
        for i, client in enumerate(clients):
            for key, count in check_stream(client, prompts[i], max_tokens[i]).items():
                outcomes[key] = outcomes.get(key, 0) + count
        assert outcomes.get(f"error {grpc.StatusCode.UNAVAILABLE.value[0]}", 0) > 0  # the lost worker's
        assert outcomes.get(f"done {common_pb2.FINISH_REASON_ABORT}", 0) > 0
        assert outcomes.get(f"done {common_pb2.FINISH_REASON_LENGTH}", 0) > NUM_REQUESTS  # the rest kept serving
        assert sum(outcomes.values()) == NUM_STREAMS * NUM_REQUESTS
        await wait_until(lambda: stage.pool.engines.num_running == 0 and stage.pool.engines.num_waiting == 0)
        assert stage.pool.engines.kv_cache_usage == 0.0
        for client in clients[1:]:
            await client.close()
        for channel in channels:
            await channel.close()

    slow = FakeWorkerConfig(step_delay_s=0.003, max_num_seqs=8, num_kv_blocks=48)
    run_stack(test, workers=[slow, FakeWorkerConfig(step_delay_s=0.003, max_num_seqs=8, num_kv_blocks=48,
                                                     worker_id="other")])
