"""Workers join and leave the scheduler's pool at run time, over real gRPC on loopback, while requests stream:
a worker that joins takes new requests, a worker that leaves finishes its own and gets no new one, and no request
is lost. Discovery follows what a name resolves to."""

from __future__ import annotations

import asyncio

import pytest

from services.common.discovery import AddressDiscovery, resolve_service
from tests.integration.scheduler_fake_worker import (FakeWorkerConfig, FakeWorkerServer, run_stack, token_request,
                                                     wait_until)

pytestmark = pytest.mark.timeout(60)
MAX_TOKENS = 8


def _new_seq_count(worker: FakeWorkerServer) -> int:
    return sum(len(plan.new_seqs) for plan in worker.plans)


def test_workers_join_and_leave_during_a_load_and_every_request_finishes() -> None:
    async def test(stage, workers, client):  # noqa: ANN001
        first = workers[0]
        joined = FakeWorkerServer(FakeWorkerConfig(step_delay_s=0.002, num_kv_blocks=1024, worker_id="joined"))
        await joined.start()
        sent: list[str] = []

        async def load(count: int) -> None:
            for _ in range(count):
                request_id = f"r{len(sent)}"
                sent.append(request_id)
                # The first prompt token names the request: 100 + its index.
                await client.send([token_request(request_id, [99 + len(sent), 2, 3], max_tokens=MAX_TOKENS)])
                await asyncio.sleep(0.01)

        try:
            await load(10)
            stage.pool.set_addresses([first.address, joined.address])  # a worker joins
            await wait_until(lambda: stage.pool.num_workers == 2)
            await load(20)
            assert _new_seq_count(joined) > 0, "the joined worker got no request"
            stage.pool.set_addresses([joined.address])  # the first worker leaves, with requests still running
            assert stage.pool.engines.draining == {first.address}
            num_before_leaving = len(sent)
            await load(20)
            await wait_until(lambda: first.address not in stage.pool.connections)
            # Requests queued on it before it left still run there; none sent afterwards does.
            on_first = {new.token_ids[0] - 100 for plan in first.plans for new in plan.new_seqs}
            assert max(on_first) < num_before_leaving, "a leaving worker was given new requests"
            await first.stop()
            await load(10)
            await client.wait_done(*sent, timeout=20)
            finished = [client.terminal(r) for r in sent]
            assert [t.WhichOneof("event") for t in finished] == ["done"] * 60
            assert all(len(client.tokens(r)) == MAX_TOKENS for r in sent)
            assert (stage.pool.num_workers, list(stage.pool.connections)) == (1, [joined.address])
            assert stage.pool.engines.draining == set()
        finally:
            await joined.stop()

    # Enough KV blocks that no sequence is preempted (a recomputed one would be sent to its worker again).
    run_stack(test, workers=[FakeWorkerConfig(step_delay_s=0.002, num_kv_blocks=1024)])


def test_a_worker_listed_again_while_leaving_stays_and_keeps_serving() -> None:
    async def test(stage, workers, client):  # noqa: ANN001
        only = workers[0]
        only.permits = asyncio.Semaphore(0)  # hold its steps: the request stays running
        await client.send([token_request("a", [1, 2, 3], max_tokens=2)])
        await wait_until(lambda: len(only.plans) == 1)
        stage.pool.set_addresses([])
        assert stage.pool.engines.draining == {only.address}
        stage.pool.set_addresses([only.address])
        assert (stage.pool.engines.draining, stage.pool.leaving) == (set(), {})
        for _ in range(4):
            only.permits.release()
        await client.wait_done("a")
        assert client.terminal("a").WhichOneof("event") == "done"
        await client.send([token_request("b", [4, 5], max_tokens=1)])
        await client.wait_done("b")
        assert client.terminal("b").WhichOneof("event") == "done"

    run_stack(test)


def test_a_leaving_worker_past_its_drain_timeout_fails_its_requests_as_unavailable() -> None:
    async def test(stage, workers, client):  # noqa: ANN001
        stuck = workers[0]
        stuck.permits = asyncio.Semaphore(0)  # never steps again
        stage.pool.drain_timeout_s = 0.2
        await client.send([token_request("a", [1, 2, 3])])
        await wait_until(lambda: len(stuck.plans) == 1)
        stage.pool.set_addresses([])
        await client.wait_done("a")
        error = client.terminal("a").error
        assert (error.code, error.message) == (14, f"worker {stuck.address} disconnected")
        assert stage.pool.connections == {}

    run_stack(test)


def test_discovery_follows_the_resolved_addresses_and_keeps_the_pool_when_resolution_fails() -> None:
    async def test(stage, workers, client):  # noqa: ANN001
        extra = FakeWorkerServer(FakeWorkerConfig(worker_id="extra"))
        await extra.start()
        answers: list = [[extra.address], OSError("no such host"), []]

        async def resolve(target: str) -> list[str]:
            assert target == "workers.example:50053"
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        discovery = AddressDiscovery(stage.pool, [workers[0].address], "workers.example:50053", 1.0, resolve)
        try:
            await discovery.refresh()
            await wait_until(lambda: stage.pool.num_workers == 2)
            await discovery.refresh()  # the name does not resolve: nobody leaves
            assert set(stage.pool.connections) == {workers[0].address, extra.address} and not stage.pool.leaving
            await discovery.refresh()  # the name resolves to nothing: the extra worker leaves
            await wait_until(lambda: list(stage.pool.connections) == [workers[0].address])
        finally:
            await extra.stop()

    run_stack(test)


def test_a_service_name_resolves_to_each_of_its_addresses_with_the_port() -> None:
    assert asyncio.run(resolve_service("127.0.0.1:50053")) == ["127.0.0.1:50053"]
    assert asyncio.run(resolve_service("::1:7000")) == ["[::1]:7000"]


def test_tokenizers_join_and_leave_the_gateway_and_a_leaving_one_gets_no_new_request() -> None:
    import aiohttp

    from tests.integration.fake_tokenizer import FakeTokenizerConfig, gateway_stack

    async def main() -> None:
        async with gateway_stack([FakeTokenizerConfig(), FakeTokenizerConfig()]) as stack, \
                aiohttp.ClientSession() as http:
            router = stack.gateway.router
            await wait_until(lambda: all(c.ready for c in router.connections))
            first, second = (conn.address for conn in router.connections)
            router.set_addresses([first])  # the second tokenizer leaves (it has nothing running)
            await wait_until(lambda: [c.address for c in router.connections] == [first])
            assert router.leaving == {}
            before = [len(f.requests) for f in stack.fakes]
            for _ in range(4):
                async with http.post(stack.http + "/v1/completions",
                                     json={"prompt": "x", "cache": False}) as resp:
                    assert resp.status == 200, await resp.text()
            assert [len(f.requests) - n for f, n in zip(stack.fakes, before)] == [4, 0]
            router.set_addresses([first, second])  # and joins again
            await wait_until(lambda: sum(c.ready for c in router.connections) == 2)

    asyncio.run(main())
